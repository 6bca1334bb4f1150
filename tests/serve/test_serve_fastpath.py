"""The HTTP fast path (edgeshift.serve.fastpath) over raw sockets: what it answers must be
what uvicorn's ASGI path answers, and the HTTP/1.1 corners it hands to that path or handles
itself (pipelining, Expect: 100-continue, HTTP/1.0, early refusals, clients that leave) must
keep the connection and the server right."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_models import (
    exchange,
    gate_backends,
    metric,
    mlp_reference,
    save_mlp,
    wait_until,
)

from edgeshift.serve import ServerSettings, ServerThread

RTOL, ATOL = 1e-5, 1e-6  # batched float32 GEMMs may sum in another order: a few ulps
PATH = "/v2/models/dense/infer"
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = save_mlp(tmp_path_factory.mktemp("fast") / "dense.onnx")
    settings = ServerSettings([path], port=0, max_body_bytes=LIMIT, access_log=True)
    with ServerThread(settings) as running:
        yield running


def _binary_request(x: np.ndarray) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + x.tobytes(), len(header)


def _post(body: bytes, header_length: int, *, extra: str = "", version: str = "1.1") -> bytes:
    head = (
        f"POST {PATH} HTTP/{version}\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {header_length}\r\nContent-Length: {len(body)}\r\n"
    )
    return (head + extra + "\r\n").encode() + body


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def output(self) -> np.ndarray:
        """The binary output tensor of an inference answer."""
        size = int(self.headers["inference-header-content-length"])
        header = json.loads(self.body[:size])
        assert header["id"] == "r1" and header["outputs"][0]["name"] == "y"
        shape = header["outputs"][0]["shape"]
        return np.frombuffer(self.body[size:], np.float32).reshape(shape)


class Conn:
    """A keep-alive HTTP/1.1 connection driven by hand."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def read(self) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(status, headers, body)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(server: ServerThread) -> Iterator[Conn]:
    c = Conn(server.url)
    yield c
    c.close()


def test_fast_and_asgi_paths_answer_alike(conn: Conn) -> None:
    x = np.random.default_rng(0).random((3, 8), dtype=np.float32)
    body, header_length = _binary_request(x)
    conn.sock.sendall(_post(body, header_length))
    fast = conn.read()
    # Expect: 100-continue is left to uvicorn's ASGI path, which sends the interim answer.
    conn.sock.sendall(_post(body, header_length, extra="Expect: 100-continue\r\n")[: -len(body)])
    interim = conn.read()
    assert interim.status == 100
    conn.sock.sendall(body)
    slow = conn.read()
    assert fast.status == slow.status == 200
    for name in ("content-type", "content-length", "inference-header-content-length"):
        assert fast.headers[name] == slow.headers[name]
    assert fast.body == slow.body
    np.testing.assert_allclose(fast.output(), mlp_reference(x), rtol=RTOL, atol=ATOL)


def test_pipelined_requests_are_answered_in_order(conn: Conn) -> None:
    rows = [np.full((1, 8), float(i), np.float32) for i in range(4)]
    wire = b""
    for i, x in enumerate(rows):
        wire += _post(*_binary_request(x))
        if i == 1:  # another route in the middle of the pipeline
            wire += b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
    conn.sock.sendall(wire)
    answers = [conn.read() for _ in range(len(rows) + 1)]
    live = answers.pop(2)
    assert live.status == 200 and json.loads(live.body) == {"live": True}
    for x, answer in zip(rows, answers, strict=True):
        assert answer.status == 200
        np.testing.assert_allclose(answer.output(), mlp_reference(x), rtol=RTOL, atol=ATOL)


def test_http_1_0_gets_its_answer_then_the_connection_closes(conn: Conn) -> None:
    x = np.ones((1, 8), np.float32)
    conn.sock.sendall(_post(*_binary_request(x), version="1.0"))
    answer = conn.read()
    assert answer.status == 200 and answer.headers["connection"] == "close"
    np.testing.assert_allclose(answer.output(), mlp_reference(x), rtol=RTOL, atol=ATOL)
    assert conn.closed_by_server()


def test_bad_requests_on_one_keep_alive_connection_leave_it_usable(conn: Conn) -> None:
    x = np.ones((2, 8), np.float32)
    body, header_length = _binary_request(x)
    conn.sock.sendall(_post(body[:-4], header_length))  # truncated tensor data
    first = conn.read()
    assert first.status == 400 and "binary_data_size" in json.loads(first.body)["error"]
    conn.sock.sendall(_post(body, header_length).replace(b"/dense/", b"/ghost/"))
    second = conn.read()
    assert second.status == 404 and "ghost" in json.loads(second.body)["error"]
    conn.sock.sendall(_post(body, header_length))
    third = conn.read()
    assert third.status == 200
    np.testing.assert_allclose(third.output(), mlp_reference(x), rtol=RTOL, atol=ATOL)


def test_a_declared_oversize_body_is_refused_before_it_is_sent(
    server: ServerThread, conn: Conn
) -> None:
    counted = metric(server, "edgeshift_inference_requests_total", model="dense", status="413")
    head = f"POST {PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LIMIT + 1}\r\n\r\n"
    conn.sock.sendall(head.encode())
    refused = conn.read()  # answered on the headers alone
    assert refused.status == 413 and "limit" in json.loads(refused.body)["error"]
    assert refused.headers["connection"] == "close"
    conn.sock.sendall(b"\x00" * (LIMIT + 1))  # read and dropped, then the server closes
    assert conn.closed_by_server()
    # Counted under the model it was sent to, and never as in flight.
    after = metric(server, "edgeshift_inference_requests_total", model="dense", status="413")
    assert after == counted + 1
    assert metric(server, "edgeshift_inference_in_flight", model="dense") == 0


def test_fast_path_requests_are_access_logged(
    server: ServerThread, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edgeshift.serve.access"):
        conn.sock.sendall(_post(*_binary_request(np.ones((1, 8), np.float32))))
        assert conn.read().status == 200
        records: list[dict[str, Any]] = []
        for _ in range(500):  # written on the server's thread just after the answer
            records = [
                json.loads(r.getMessage())
                for r in caplog.records
                if r.name == "edgeshift.serve.access"
            ]
            records = [r for r in records if r["path"] == PATH]
            if records:
                break
            time.sleep(0.01)
    assert [(r["method"], r["status"]) for r in records] == [("POST", 200)]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", records[0]["client"])


def test_a_client_gone_before_its_answer_is_dropped_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = gate_backends(monkeypatch)
    settings = ServerSettings([save_mlp(tmp_path / "dense.onnx")], port=0, access_log=False)
    x = np.ones((1, 8), np.float32)
    wire = _post(*_binary_request(x))
    with ServerThread(settings) as server, ThreadPoolExecutor(1) as pool:
        holder = Conn(server.url)
        holder.sock.sendall(wire)
        first = pool.submit(holder.read)
        assert gated[0].entered.wait(30)  # the batcher is busy: the next request waits
        leaver = Conn(server.url)
        leaver.sock.sendall(wire)
        wait_until(lambda: metric(server, "edgeshift_queue_depth", model="dense") >= 1, "queue")
        leaver.close()
        wait_until(
            lambda: metric(server, "edgeshift_inference_requests_total", status="499") >= 1, "a 499"
        )
        gated[0].gate.set()
        assert first.result(30).status == 200
        holder.close()
        # The one batch that ran was the first request's row alone; the server still answers.
        assert metric(server, "edgeshift_batch_size_sum", model="dense") == 1
        body, header_length = _binary_request(x)
        headers = {"Inference-Header-Content-Length": str(header_length)}
        assert exchange(server.url, "POST", PATH, body, headers)[0] == 200


def test_a_chunked_upload_is_answered(server: ServerThread) -> None:
    import http.client

    x = np.random.default_rng(1).random((2, 8), dtype=np.float32)
    body, header_length = _binary_request(x)
    host, port = server.url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        chunks = iter([body[:7], body[7:50], body[50:]])
        headers = {"Inference-Header-Content-Length": str(header_length)}
        conn.request("POST", PATH, body=chunks, headers=headers, encode_chunked=True)
        response = conn.getresponse()
        answer = Response(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()
    assert answer.status == 200
    answer.headers = {k.lower(): v for k, v in answer.headers.items()}
    np.testing.assert_allclose(answer.output(), mlp_reference(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("expect", [False, True], ids=["fast", "asgi"])
def test_a_large_json_answer_is_encoded_while_others_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect: bool
) -> None:
    import threading

    import edgeshift.serve.endpoint as endpoint_module

    encoding, release = threading.Event(), threading.Event()
    encoded_in: list[str] = []
    real_encode = endpoint_module._encode_or_error

    def held_encode(*args: Any) -> Any:
        encoded_in.append(threading.current_thread().name)
        encoding.set()
        assert release.wait(30)
        return real_encode(*args)

    monkeypatch.setattr(endpoint_module, "_encode_or_error", held_encode)
    settings = ServerSettings([save_mlp(tmp_path / "dense.onnx")], port=0, access_log=False)
    large_x = np.random.default_rng(2).random((8192, 8), dtype=np.float32)  # 128 KiB of output
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(large_x.shape),
                    "parameters": {"binary_data_size": large_x.nbytes},
                }
            ]
        }
    ).encode()
    extra = "Expect: 100-continue\r\n" if expect else ""
    with ServerThread(settings) as server:
        large, small = Conn(server.url), Conn(server.url)
        try:
            if expect:
                large.sock.sendall(
                    _post(header + large_x.tobytes(), len(header), extra=extra)[
                        : -(len(header) + large_x.nbytes)
                    ]
                )
                assert large.read().status == 100
                large.sock.sendall(header + large_x.tobytes())
            else:
                large.sock.sendall(_post(header + large_x.tobytes(), len(header)))
            assert encoding.wait(30)  # its answer is being encoded, and held there
            x = np.ones((1, 8), np.float32)
            small.sock.sendall(_post(*_binary_request(x)))
            answer = small.read()  # served meanwhile: the event loop is not encoding
            assert answer.status == 200
            np.testing.assert_allclose(answer.output(), mlp_reference(x), rtol=RTOL, atol=ATOL)
            release.set()
            big = large.read()
        finally:
            release.set()
            large.close()
            small.close()
    assert big.status == 200 and big.headers["content-type"] == "application/json"
    output = json.loads(big.body)["outputs"][0]
    assert output["shape"] == [8192, 4]
    got = np.array(output["data"], np.float32).reshape(8192, 4)
    np.testing.assert_allclose(got, mlp_reference(large_x), rtol=RTOL, atol=ATOL)
    assert len(encoded_in) == 1 and encoded_in[0].startswith("edgeshift-encode")


def test_a_json_answer_encoded_in_pieces_equals_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeshift.serve.protocol as protocol

    y = np.random.default_rng(3).normal(size=(1001, 7)).astype(np.float32)
    y[5, 2], y[700, 0], y[1000, 6] = np.nan, np.inf, -np.inf  # in different pieces
    outputs = {"y": y, "n": np.arange(1001 * 3, dtype=np.int64).reshape(1001, 3)}
    request = protocol.InferRequest({}, {})
    whole = protocol.encode_infer_response("m", "1", outputs, request).body
    monkeypatch.setattr(protocol, "JSON_PIECE_VALUES", 1000)
    pieces = protocol.encode_infer_response("m", "1", outputs, request).body
    assert pieces == whole
    data = json.loads(pieces)["outputs"]
    assert data[0]["data"][5 * 7 + 2] == "NaN" and data[0]["data"][700 * 7] == "Infinity"
    assert data[1]["data"] == list(range(1001 * 3))
