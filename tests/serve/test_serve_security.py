"""Who may call the server, over real sockets: the repository API off unless enabled, Host and
Origin checks (DNS rebinding, the cross-site text/plain unload), bearer tokens for inference
and separately for the repository API, TLS and mTLS with tritonclient, and the warning for a
server bound beyond loopback with no authentication."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from certs import TestCerts, make_certs
from serve_models import exchange, make_repository, mlp_reference, save_mlp
from tritonclient.utils import InferenceServerException

from edgeshift.errors import ConfigError
from edgeshift.serve import ServerSettings, ServerThread
from edgeshift.serve.security import AuthSettings, RequestGuard, TlsSettings, read_tokens

TOKEN = "inference-token-0123456789abcdef"
REPO_TOKEN = "repository-token-0123456789abcdef"
UNLOAD = "/v2/repository/models/{}/unload"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _serve(paths: list[Path], **settings: object) -> ServerThread:
    return ServerThread(ServerSettings(paths, port=0, access_log=False, **settings))  # type: ignore[arg-type]


def _error(body: bytes) -> str:
    return str(json.loads(body)["error"])


def _x(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, 8), dtype=np.float32)


def _infer(client: th.InferenceServerClient, headers: dict[str, str] | None = None) -> np.ndarray:
    inp = th.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(_x(), binary_data=True)
    result = client.infer("mlp", [inp], headers=headers)
    out = result.as_numpy("y")
    assert out is not None
    return out


def test_the_repository_api_is_off_unless_enabled(repo: Path) -> None:
    with _serve([repo]) as server:
        for path in ("/v2/repository/index", UNLOAD.format("mlp")):
            status, headers, body = exchange(server.url, "POST", path)
            assert status == 403
            assert headers["content-type"] == "application/json"
            assert "--repository-api" in _error(body)
        assert exchange(server.url, "GET", "/v2/models/mlp/ready")[0] == 200  # still served


def test_a_cross_site_text_plain_post_cannot_unload_a_model(repo: Path) -> None:
    # A web page can POST text/plain cross-site without a CORS preflight; the browser adds
    # Origin, which is what the server refuses.
    with _serve([repo], auth=AuthSettings(repository_api=True)) as server:
        host = server.url
        attack = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        status, _, body = exchange(host, "POST", UNLOAD.format("mlp"), b"{}", attack)
        assert status == 403 and "cross-origin" in _error(body)
        assert exchange(host, "GET", "/v2/models/mlp/ready")[0] == 200
        # The same request from the server's own origin (or a non-browser client) is served.
        same = {"Origin": f"http://{host}", "Content-Type": "text/plain"}
        assert exchange(host, "POST", UNLOAD.format("double"), b"{}", same)[0] == 200
        assert exchange(host, "POST", UNLOAD.format("mlp"), b"{}")[0] == 200
        assert exchange(host, "GET", "/v2/models/mlp/ready")[0] != 200


def test_allowed_origins_may_call_in(repo: Path) -> None:
    auth = AuthSettings(allowed_origins=frozenset({"https://dashboard.example"}))
    with _serve([repo], auth=auth) as server:
        ok = {"Origin": "https://dashboard.example"}
        assert exchange(server.url, "GET", "/v2/models/mlp", headers=ok)[0] == 200
        bad = {"Origin": "https://dashboard.example.evil"}
        assert exchange(server.url, "GET", "/v2/models/mlp", headers=bad)[0] == 403


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_dns_rebinding_host_is_refused_on_a_loopback_bind(repo: Path) -> None:
    auth = AuthSettings(allowed_hosts=frozenset({"edge.local"}))
    with _serve([repo], auth=auth) as server:
        # The browser resolved evil.example to 127.0.0.1: the Host header still says evil.
        for method, path, body in (
            ("GET", "/v2/models/mlp", b""),
            ("POST", "/v2/models/mlp/infer", b'{"inputs":[]}'),  # the fast path
        ):
            head = f"{method} {path} HTTP/1.1\r\nHost: evil.example:{server.port}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            status, answer = _raw(server.url, head.encode() + body)
            assert status == 403 and "Host 'evil.example" in _error(answer)
        for host in ("localhost", f"127.0.0.1:{server.port}", "edge.local:8000", "[::1]:1"):
            request = f"GET /v2/models/mlp HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            assert _raw(server.url, request.encode())[0] == 200, host


def test_inference_needs_the_token_and_health_stays_open(repo: Path) -> None:
    auth = AuthSettings(inference_tokens=frozenset({TOKEN}))
    with _serve([repo], auth=auth) as server:
        client = th.InferenceServerClient(server.url)
        try:
            for headers in (None, {"Authorization": "Bearer wrong-token-0123456789"}):
                with pytest.raises(InferenceServerException, match="needs a token") as info:
                    _infer(client, headers)
                assert info.value.status() == "401"
            np.testing.assert_allclose(
                _infer(client, {"Authorization": f"Bearer {TOKEN}"}),
                mlp_reference(_x(), seed=2),  # latest version of mlp: seed 2
                rtol=1e-5,
                atol=1e-6,
            )
            assert client.is_server_live() and client.is_server_ready()
        finally:
            client.close()
        for path in ("/v2/models/mlp", "/metrics", "/v2/models/mlp/config", "/v2"):
            assert exchange(server.url, "GET", path)[0] == 401, path
            ok = {"Authorization": f"Bearer {TOKEN}"}
            assert exchange(server.url, "GET", path, headers=ok)[0] == 200, path


def test_the_repository_api_has_its_own_token(repo: Path) -> None:
    auth = AuthSettings(
        inference_tokens=frozenset({TOKEN}),
        repository_tokens=frozenset({REPO_TOKEN}),
        repository_api=True,
    )
    with _serve([repo], auth=auth) as server:
        index = "/v2/repository/index"
        inference = {"Authorization": f"Bearer {TOKEN}"}
        status, _, body = exchange(server.url, "POST", index, headers=inference)
        assert status == 401 and "--repository-token-file" in _error(body)
        repository = {"Authorization": f"Bearer {REPO_TOKEN}"}
        status, _, body = exchange(server.url, "POST", index, headers=repository)
        assert status == 200 and {m["name"] for m in json.loads(body)} == {"mlp", "double"}


def test_tls_serves_tritonclient_and_the_fast_path(certs: TestCerts, tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx", seed=2)
    tls = TlsSettings(certs.server_cert, certs.server_key)
    with _serve([model], tls=tls) as server:
        client = th.InferenceServerClient(
            server.url, ssl=True, ssl_options={"ca_certs": str(certs.ca)}
        )
        try:
            y = _infer(client)
        finally:
            client.close()
        np.testing.assert_allclose(y, mlp_reference(_x(), seed=2), rtol=1e-5, atol=1e-6)
        # Plain HTTP to the TLS port gets no answer.
        with pytest.raises((ConnectionError, OSError, ValueError, IndexError)):
            _raw(server.url, b"GET /v2 HTTP/1.1\r\nHost: localhost\r\n\r\n")


def _tls_get(url: str, certs: TestCerts, cert: Path | None, key: Path | None) -> int:
    context = ssl.create_default_context(cafile=certs.ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    host, port = url.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(b"GET /v2/models/mlp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split()[1])


def test_mtls_a_verified_client_certificate_authenticates(certs: TestCerts, repo: Path) -> None:
    tls = TlsSettings(certs.server_cert, certs.server_key, client_ca=certs.ca)
    auth = AuthSettings(inference_tokens=frozenset({TOKEN}))
    with _serve([repo], tls=tls, auth=auth) as server:
        # No token needed: the certificate is the credential.
        assert _tls_get(server.url, certs, certs.client_cert, certs.client_key) == 200
        for cert, key in ((None, None), (certs.stranger_cert, certs.stranger_key)):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError, IndexError)):
                _tls_get(server.url, certs, cert, key)
        client = th.InferenceServerClient(
            server.url,
            ssl=True,
            ssl_options={
                "ca_certs": str(certs.ca),
                "certfile": str(certs.client_cert),
                "keyfile": str(certs.client_key),
            },
        )
        try:
            np.testing.assert_allclose(
                _infer(client), mlp_reference(_x(), seed=2), rtol=1e-5, atol=1e-6
            )
        finally:
            client.close()


def test_unusable_tls_files_are_one_line_errors(certs: TestCerts, tmp_path: Path) -> None:
    wrong_key = TlsSettings(certs.server_cert, certs.client_key)
    with pytest.raises(ConfigError, match="matching key"):
        wrong_key.server_context()
    missing = TlsSettings(tmp_path / "nope.pem", certs.server_key)
    with pytest.raises(ConfigError, match="--tls-cert nope.pem"):
        missing.server_context()


def test_binding_beyond_loopback_without_auth_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    with caplog.at_level(logging.WARNING, "edgeshift.serve"), _serve([model], host="0.0.0.0"):
        pass
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no authentication" in r.getMessage() for r in warned)
    caplog.clear()
    auth = AuthSettings(inference_tokens=frozenset({TOKEN}))
    with caplog.at_level(logging.WARNING, "edgeshift.serve"), _serve([model], auth=auth):
        pass
    assert not any("no authentication" in r.getMessage() for r in caplog.records)


def test_token_files_hold_one_token_a_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# inference clients\n{TOKEN}\n\n{REPO_TOKEN}\n")
    assert read_tokens(path, "--auth-token-file") == {TOKEN, REPO_TOKEN}
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        read_tokens(path, "--auth-token-file")
    path.write_text("\n# nothing\n")
    with pytest.raises(ConfigError, match="holds no token"):
        read_tokens(path, "--auth-token-file")
    with pytest.raises(ConfigError, match="cannot read --auth-token-file"):
        read_tokens(tmp_path / "absent", "--auth-token-file")


def test_the_guard_on_its_own() -> None:
    guard = RequestGuard(AuthSettings(inference_tokens=frozenset({TOKEN})), loopback_bind=True)
    ok = [(b"host", b"localhost:8000"), (b"authorization", f"bearer {TOKEN}".encode())]
    assert guard.check("/v2/models/m/infer", ok) is None
    refusal = guard.check("/v2/models/m/infer", ok[:1])
    assert refusal is not None and refusal.status == 401
    assert guard.check("/v2/health/ready", [(b"host", b"localhost")]) is None
    refusal = guard.check("/v2/health/ready", [(b"host", b"evil.example")])
    assert refusal is not None and refusal.status == 403
    refusal = guard.check("/v2", [*ok, (b"origin", b"null")])  # a sandboxed page
    assert refusal is not None and refusal.status == 403
    public = RequestGuard(AuthSettings(), loopback_bind=False)
    assert public.check("/v2", [(b"host", b"edge-box.example")]) is None


def test_the_asgi_guard_refuses_alike_without_the_fast_path() -> None:
    # An app from create_app served by another HTTP stack (uvicorn's h11 here) gets the same
    # checks from GuardMiddleware.
    import threading

    import uvicorn

    from edgeshift.serve.app import GuardMiddleware

    async def hello(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"hi"})  # type: ignore[operator]

    guard = RequestGuard(AuthSettings(inference_tokens=frozenset({TOKEN})), loopback_bind=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        GuardMiddleware(hello, guard), http="h11", log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.01)
        url = f"127.0.0.1:{sock.getsockname()[1]}"
        status, headers, body = exchange(url, "GET", "/v2/models/m")
        assert status == 401 and headers["content-type"] == "application/json"
        assert "needs a token" in _error(body)
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert exchange(url, "GET", "/v2/models/m", headers=ok)[0] == 200
        evil = {**ok, "Origin": "http://evil.example", "Content-Type": "text/plain"}
        assert exchange(url, "POST", UNLOAD.format("m"), b"{}", evil)[0] == 403
        assert exchange(url, "GET", "/v2/health/live", headers={"Host": "evil.example"})[0] == 403
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_grpc_is_served_over_tls_and_mtls_with_the_http_settings(
    certs: TestCerts, tmp_path: Path
) -> None:
    import tritonclient.grpc as tg

    model = save_mlp(tmp_path / "mlp.onnx", seed=2)
    tls = TlsSettings(certs.server_cert, certs.server_key, client_ca=certs.ca)
    with _serve([model], tls=tls, grpc_port=0) as server:
        assert server.grpc_url is not None
        grpc_url = server.grpc_url.replace("127.0.0.1", "localhost")  # the certificate's name
        client = tg.InferenceServerClient(
            grpc_url,
            ssl=True,
            root_certificates=str(certs.ca),
            private_key=str(certs.client_key),
            certificate_chain=str(certs.client_cert),
        )
        try:
            inp = tg.InferInput("x", [2, 8], "FP32")
            inp.set_data_from_numpy(_x())
            y = client.infer("mlp", [inp]).as_numpy("y")
            np.testing.assert_allclose(y, mlp_reference(_x(), seed=2), rtol=1e-5, atol=1e-6)
        finally:
            client.close()
        anonymous = tg.InferenceServerClient(grpc_url, ssl=True, root_certificates=str(certs.ca))
        try:
            with pytest.raises(InferenceServerException):
                anonymous.is_server_live()
        finally:
            anonymous.close()
