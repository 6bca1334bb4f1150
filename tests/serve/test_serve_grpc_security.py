"""gRPC with bearer tokens, TLS and mTLS: the same rules as HTTP (serve/security.py), with
tritonclient.grpc over real sockets and certificates made by tests/serve/certs.py."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from certs import TestCerts, make_certs
from serve_models import save_mlp
from tritonclient.utils import InferenceServerException

from edgeshift.serve import ServerSettings, ServerThread
from edgeshift.serve.security import AuthSettings, TlsSettings

TOKEN = "inference-token-1"
REPO_TOKEN = "repository-token-2"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_mlp(tmp_path_factory.mktemp("models") / "dense.onnx")


def _infer(client: tg.InferenceServerClient, **kwargs: object) -> np.ndarray:
    inp = tg.InferInput("x", [1, 8], "FP32")
    inp.set_data_from_numpy(np.ones((1, 8), np.float32))
    return client.infer("dense", [inp], **kwargs).as_numpy("y")  # type: ignore[arg-type]


def _code(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def test_tokens_over_tls(certs: TestCerts, model: Path) -> None:
    settings = ServerSettings(
        [model],
        port=0,
        grpc_port=0,
        access_log=False,
        auth=AuthSettings(
            inference_tokens=frozenset({TOKEN}),
            repository_tokens=frozenset({REPO_TOKEN}),
            repository_api=True,
        ),
        tls=TlsSettings(certs.server_cert, certs.server_key),
    )
    with ServerThread(settings) as server:
        assert server.server.grpc_port is not None
        url = f"localhost:{server.server.grpc_port}"
        client = tg.InferenceServerClient(url, ssl=True, root_certificates=str(certs.ca))
        bearer = {"authorization": f"Bearer {TOKEN}"}
        repo_bearer = {"authorization": f"Bearer {REPO_TOKEN}"}
        assert client.is_server_live()  # health needs no token, as on HTTP
        status, message = _code(lambda: _infer(client))
        assert status == "StatusCode.UNAUTHENTICATED" and "--auth-token-file" in message
        wrong = {"authorization": "Bearer nope"}
        assert _code(lambda: _infer(client, headers=wrong))[0] == "StatusCode.UNAUTHENTICATED"
        assert _infer(client, headers=bearer).shape == (1, 4)
        for headers, want in [(None, "UNAUTHENTICATED"), (bearer, None)]:
            answers: queue.Queue[InferenceServerException | None] = queue.Queue()
            client.start_stream(
                lambda result, error, answers=answers: answers.put(error), headers=headers
            )
            inp = tg.InferInput("x", [1, 8], "FP32")
            inp.set_data_from_numpy(np.ones((1, 8), np.float32))
            # without a token the server ends the stream at once: the send may already fail
            with contextlib.suppress(InferenceServerException):
                client.async_stream_infer("dense", [inp])
            error = answers.get(timeout=30)
            assert (error and str(error.status()).split(".")[-1]) == want
            client.stop_stream()
        assert _code(lambda: client.get_model_metadata("dense"))[0] == (
            "StatusCode.UNAUTHENTICATED"
        )
        # the repository API takes its own token, not the inference one
        assert _code(lambda: client.get_model_repository_index(headers=bearer))[0] == (
            "StatusCode.UNAUTHENTICATED"
        )
        index = client.get_model_repository_index(headers=repo_bearer, as_json=True)
        assert index["models"][0]["name"] == "dense"
        client.unload_model("dense", headers=repo_bearer)
        assert not client.is_model_ready("dense", headers=bearer)
        client.load_model("dense", headers=repo_bearer)
        assert client.is_model_ready("dense", headers=bearer)
        client.close()

        plain = tg.InferenceServerClient(url)  # no TLS: the handshake never completes
        assert _code(lambda: plain.is_server_live())[0] == "StatusCode.UNAVAILABLE"
        plain.close()


def test_mtls_client_certificate_authenticates(certs: TestCerts, model: Path) -> None:
    settings = ServerSettings(
        [model],
        port=0,
        grpc_port=0,
        access_log=False,
        auth=AuthSettings(inference_tokens=frozenset({TOKEN})),
        tls=TlsSettings(certs.server_cert, certs.server_key, client_ca=certs.ca),
    )
    with ServerThread(settings) as server:
        url = f"localhost:{server.server.grpc_port}"
        client = tg.InferenceServerClient(
            url,
            ssl=True,
            root_certificates=str(certs.ca),
            private_key=str(certs.client_key),
            certificate_chain=str(certs.client_cert),
        )
        assert _infer(client).shape == (1, 4)  # the certificate, no token
        client.close()
        for key, cert in [(certs.stranger_key, certs.stranger_cert), (None, None)]:
            other = tg.InferenceServerClient(
                url,
                ssl=True,
                root_certificates=str(certs.ca),
                private_key=None if key is None else str(key),
                certificate_chain=None if cert is None else str(cert),
            )
            assert _code(lambda other=other: _infer(other))[0] == "StatusCode.UNAVAILABLE"
            other.close()
