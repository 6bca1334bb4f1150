"""The agent's link to the control plane: every device request signed (fleet/auth.py) over
the exact path and query it is sent with; errors become FleetError with one line."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from httpcore import AsyncHTTP11Connection
from pydantic import BaseModel, ValidationError
from tuf.api import exceptions as tuf_exceptions

from edgeshift.errors import FleetError
from edgeshift.fleet.auth import sign_headers
from edgeshift.fleet.schema import (
    DesiredState,
    DeviceReport,
    EnrolRequest,
    EnrolResponse,
    TelemetryBatch,
)
from edgeshift.fleet.tuf_bundle import (
    BUNDLE_PATH,
    MAX_BUNDLE_BYTES,
    BundleUnavailable,
    BundlingFetcher,
)

CHUNK_BYTES = 64 << 10
TUF_PATH = "/v1/device/tuf"  # metadata under /metadata/, targets under /targets/
# Every request but the long poll: a control plane that does not answer in this long is
# treated as unreachable (the agent backs off and retries).
TIMEOUT_S = 15.0
MAX_ANSWER_BYTES = 1 << 20  # a JSON answer larger than this is refused
# Idle connections are kept past the 15 s report interval, so a device's steady reports reuse
# one connection instead of a TCP connect (and the control plane an accept) each; and dropped
# well before the control plane's keep-alive timeout (fleet.server.KEEP_ALIVE_S, 60 s) closes
# them: with both equal, a request sent on a connection the server was just closing failed
# (RemoteProtocolError) and the report or poll waited for its retry.
KEEPALIVE_EXPIRY_S = 40.0
LIMITS = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)
# httpcore reads a response body 64 KiB at a time, and each read goes through its, h11's and
# httpx's layers: 85 of them per 5 MB bundle. 256 KiB reads cut the agent's CPU per download
# by about 40% (benchmarks/fleet.py). httpcore has no option for it; its class attribute is
# set only when it still has the value this was measured against (tests check it took).
DOWNLOAD_READ_BYTES = 256 * 1024
if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", None) == 64 * 1024:
    AsyncHTTP11Connection.READ_NUM_BYTES = DOWNLOAD_READ_BYTES


def _path_and_query(url: httpx.URL) -> str:
    raw = url.raw_path.decode("ascii")  # path and query exactly as they go on the wire
    return raw or "/"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])[:300]
    except ValueError:
        pass
    return response.text[:300] or response.reason_phrase


class DeviceTransport:
    """Signed requests of one device. CLIENT is shared by many agents in one process (the
    benchmark); without one, the transport opens and closes its own."""

    def __init__(
        self,
        server_url: str,
        device_id: str,
        private_key: Ed25519PrivateKey,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.device_id = device_id
        self.private_key = private_key
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(timeout=TIMEOUT_S, limits=LIMITS)

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    def _url(self, path: str) -> str:
        return self.server_url + path

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
        timeout_s: float = TIMEOUT_S,
        signed: bool = True,
    ) -> httpx.Response:
        content = body.model_dump_json().encode() if body is not None else b""
        request = self.client.build_request(
            method,
            self._url(path),
            params=params,
            content=content or None,
            headers={"content-type": "application/json"} if content else None,
            timeout=timeout_s,
        )
        if signed:
            request.headers.update(
                sign_headers(
                    self.private_key, self.device_id, method, _path_and_query(request.url), content
                )
            )
        try:
            response = await self.client.send(request)
        except httpx.HTTPError as exc:
            raise FleetError(
                f"control plane {self.server_url} unreachable ({type(exc).__name__}) — "
                "the agent keeps serving and retries",
                503,
            ) from None
        if response.status_code >= 400:
            raise FleetError(
                f"control plane refused {method} {path}: {_error_text(response)}",
                response.status_code,
            )
        if len(response.content) > MAX_ANSWER_BYTES:
            raise FleetError(f"control plane answer to {path} is too large", 502)
        return response

    async def enrol(self, request: EnrolRequest) -> EnrolResponse:
        """Join the fleet with a one-time token (the only unsigned device request)."""
        response = await self._send("POST", "/v1/enrol", body=request, signed=False)
        answer = _parse(EnrolResponse, response)
        self.device_id = answer.device_id
        return answer

    async def desired(self, generation: int, wait_s: float) -> DesiredState | None:
        """Long poll: the desired state once its generation is above GENERATION, or whatever
        the control plane answers after WAIT_S (None for an empty answer)."""
        response = await self._send(
            "GET",
            "/v1/device/desired",
            params={"generation": str(generation), "wait": f"{wait_s:g}"},
            timeout_s=wait_s + TIMEOUT_S,
        )
        if response.status_code == 204 or not response.content:
            return None
        return _parse(DesiredState, response)

    async def report(self, report: DeviceReport) -> None:
        await self._send("POST", "/v1/device/report", body=report)

    async def telemetry(self, batch: TelemetryBatch) -> int:
        response = await self._send("POST", "/v1/device/telemetry", body=batch)
        kept = response.json().get("kept", 0) if response.content else 0
        return int(kept)

    async def download(self, target_path: str, part_file: Path, expected_length: int) -> Path:
        """Fetch the TUF target TARGET_PATH into PART_FILE, resuming from its size with an HTTP
        Range request. Refuses more than EXPECTED_LENGTH bytes. OSError (ENOSPC) propagates."""
        have = part_file.stat().st_size if part_file.exists() else 0
        if have > expected_length:
            part_file.unlink()
            have = 0
        if have == expected_length:
            return part_file
        path = "/v1/device/tuf/targets/" + target_path.lstrip("/")
        request = self.client.build_request("GET", self._url(path), timeout=TIMEOUT_S)
        if have:
            request.headers["Range"] = f"bytes={have}-"
        request.headers.update(
            sign_headers(self.private_key, self.device_id, "GET", _path_and_query(request.url))
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise FleetError(
                f"download of {target_path} failed ({type(exc).__name__}); it resumes later", 503
            ) from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise FleetError(
                    f"control plane refused {target_path}: {_error_text(response)}",
                    response.status_code,
                )
            if response.status_code != 206:
                have = 0  # the server sent the whole file: start over
            with part_file.open("r+b" if have else "wb") as f:
                f.seek(have)
                f.truncate()
                # As the socket hands them over: re-chunking to a fixed size copies each byte.
                async for chunk in response.aiter_bytes():
                    have += len(chunk)
                    if have > expected_length:
                        raise FleetError(
                            f"{target_path} is longer than its signed length "
                            f"{expected_length} bytes — refused",
                            502,
                        )
                    f.write(chunk)
                # No fsync: the part file is hashed against the signed target before anything
                # is unpacked, so bytes a power cut lost fail that check and are fetched
                # again. Unsynced, a bundle unpacked and deleted within the kernel's writeback
                # delay is never written to the disk at all (half an install's writes).
                f.flush()
        except httpx.HTTPError as exc:
            raise FleetError(
                f"download of {target_path} broke off at {have} bytes "
                f"({type(exc).__name__}); it resumes later",
                503,
            ) from None
        finally:
            await response.aclose()
        if have != expected_length:
            raise FleetError(
                f"download of {target_path} stopped at {have} of {expected_length} bytes; "
                "it resumes later",
                503,
            )
        return part_file

    def fetcher(self) -> SignedFetcher:
        return SignedFetcher(self.server_url, self.device_id, self.private_key)


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise FleetError(
            f"control plane sent a malformed {model.__name__}: {exc.errors()[0]['msg']}", 502
        ) from None


class SignedFetcher(BundlingFetcher):
    """python-tuf's fetcher, signing each metadata and target request as this device, and
    bringing a refresh's metadata in one request (fleet/tuf_bundle.py) where the control
    plane offers it. Synchronous, as ngclient is: the agent runs TUF refreshes on a worker
    thread."""

    def __init__(
        self,
        server_url: str,
        device_id: str,
        private_key: Ed25519PrivateKey,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.server_url = server_url.rstrip("/")
        self.device_id = device_id
        self.private_key = private_key
        self.timeout_s = timeout_s
        self.metadata_url = f"{self.server_url}{TUF_PATH}/metadata/"
        # One kept-alive client for every metadata file: a new httpx.Client builds an SSL
        # context (the CA bundle) each time, which was most of a TUF refresh's CPU.
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s, limits=LIMITS)
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _get(self, url: str, max_bytes: int | None = None) -> list[bytes]:
        if not url.startswith(self.server_url + "/"):
            # TUF builds URLs from the bases it was given; anything else is not ours to sign.
            raise tuf_exceptions.DownloadError(f"refusing to fetch {url}: not the control plane")
        split = urlsplit(url)
        path_and_query = split.path + (f"?{split.query}" if split.query else "")
        headers = sign_headers(self.private_key, self.device_id, "GET", path_and_query)
        chunks: list[bytes] = []
        with self._http().stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                raise tuf_exceptions.DownloadHTTPError(
                    f"{url}: {response.status_code}", response.status_code
                )
            have = 0
            for chunk in response.iter_bytes(CHUNK_BYTES):
                have += len(chunk)
                if max_bytes is not None and have > max_bytes:
                    raise BundleUnavailable(f"{url}: more than {max_bytes} bytes")
                chunks.append(chunk)
        return chunks

    def _fetch_file(self, url: str) -> Iterator[bytes]:
        # Buffered: TUF bounds each file's length itself as it reads.
        return iter(self._get(url))

    def _fetch_bundle(self, from_root: int) -> bytes:
        url = f"{self.server_url}{TUF_PATH}{BUNDLE_PATH}?root={from_root}"
        return b"".join(self._get(url, MAX_BUNDLE_BYTES))
