"""A real server with the gRPC front end beside HTTP, on one thread and event loop: the
ServerThread of the serve tests plus a GrpcFrontend started on the server's own loop once
uvicorn accepts (until server.py starts it itself)."""

from __future__ import annotations

import asyncio
from typing import Any

from edgeshift.serve import ServerSettings, ServerThread
from edgeshift.serve.grpc import GrpcFrontend
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.security import AuthSettings, TlsSettings


class GrpcServerThread(ServerThread):
    """``with GrpcServerThread(settings) as s:`` then HTTP on ``s.url``, gRPC on ``s.grpc_url``."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        limits: RequestLimits | None = None,
        auth: AuthSettings | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        super().__init__(settings)
        self.limits = limits or settings.request_limits()
        self.auth = auth or settings.auth
        self.tls = tls or settings.tls
        self.frontend: GrpcFrontend | None = None
        self.grpc_port = 0

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def _signal_ready(self) -> None:
        while not self.server.started:
            await asyncio.sleep(0.005)
        assert self.server.repository is not None
        frontend = GrpcFrontend(
            self.server.repository,
            self.server.metrics,
            limits=self.limits,
            auth=self.auth,
            tls=self.tls,
        )
        try:
            self.grpc_port = await frontend.start("127.0.0.1", 0)
            self.frontend = frontend
        except BaseException as exc:
            self._error = exc
            self.server.request_exit()
        self._ready.set()

    def run_on_loop(self, coro: Any, timeout_s: float = 60.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.frontend is not None and self._thread.is_alive():
            self.run_on_loop(self.frontend.stop(5.0), timeout_s)
            self.frontend = None
        super().stop(timeout_s)
