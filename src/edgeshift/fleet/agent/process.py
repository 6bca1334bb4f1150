"""One agent process (``edgeshift agent``): its identity (an Ed25519 key made on the device,
enrolled once with a one-time token), its trusted TUF root, the in-process inference server,
and the agent loop until SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from edgeshift import __version__
from edgeshift.errors import ConfigError, FleetError
from edgeshift.fleet.agent.agent import CRASH_ENV, Agent, AgentOptions
from edgeshift.fleet.agent.host import ServerHost
from edgeshift.fleet.agent.journal import write_atomic
from edgeshift.fleet.agent.transport import LIMITS, TIMEOUT_S, DeviceTransport
from edgeshift.fleet.auth import (
    load_private_key,
    new_private_key,
    private_key_bytes,
    public_key_b64,
)
from edgeshift.fleet.schema import EnrolRequest, Phase, is_name
from edgeshift.serve.repository import ServeOptions

log = logging.getLogger("edgeshift.agent")
IDENTITY_NAME = "identity.json"
MAX_ROOT_BYTES = 1 << 20


class Identity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    server_url: str
    private_key: str  # raw Ed25519, base64; the file is 0600


@dataclass
class AgentSettings:
    server_url: str
    data_dir: Path
    enrol_token: str | None = None
    root: Path | None = None  # the trusted TUF root.json, needed at enrolment
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    serve_options: ServeOptions = field(default_factory=ServeOptions)
    options: AgentOptions = field(default_factory=AgentOptions)


def load_identity(data_dir: Path) -> Identity | None:
    path = data_dir / IDENTITY_NAME
    if not path.exists():
        return None
    try:
        return Identity.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({type(exc).__name__}) — restore it, or enrol again into a "
            "fresh --data-dir with a new --enrol-token"
        ) from None


async def enrol(settings: AgentSettings, client: httpx.AsyncClient | None = None) -> Identity:
    """First run: make a key, enrol with the token, keep the identity and the trusted root.
    CLIENT: the agent's HTTP client (None: one of the enrolment's own)."""
    s = settings
    if not s.enrol_token or s.root is None:
        raise ConfigError(
            f"{s.data_dir} holds no identity: give --enrol-token and --root root.json to enrol"
        )
    name = s.name or socket.gethostname().split(".")[0]
    if not is_name(name):
        raise ConfigError(f"device name {name!r} is not valid — pass --name with [A-Za-z0-9._-]")
    try:
        root = s.root.read_bytes()[: MAX_ROOT_BYTES + 1]
        json.loads(root)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--root {s.root}: not a readable root.json ({exc})") from None
    if len(root) > MAX_ROOT_BYTES:
        raise ConfigError(f"--root {s.root} is larger than 1 MiB: not a TUF root")
    key = new_private_key()
    transport = DeviceTransport(s.server_url, "", key, client)
    try:
        answer = await transport.enrol(
            EnrolRequest(
                token=s.enrol_token, name=name, public_key=public_key_b64(key), labels=s.labels
            )
        )
    finally:
        await transport.aclose()
    (s.data_dir / "tuf").mkdir(parents=True, exist_ok=True)
    write_atomic(s.data_dir / "tuf" / "root.json", root)
    identity = Identity(
        device_id=answer.device_id,
        server_url=s.server_url,
        private_key=base64.b64encode(private_key_bytes(key)).decode(),
    )
    write_atomic(s.data_dir / IDENTITY_NAME, identity.model_dump_json().encode(), mode=0o600)
    os.chmod(s.data_dir / IDENTITY_NAME, 0o600)
    return identity


def crash_phase_from_env() -> Phase | None:
    raw = os.environ.get(CRASH_ENV)
    if not raw:
        return None
    try:
        return Phase(raw)
    except ValueError:
        raise ConfigError(f"{CRASH_ENV}={raw!r} names no phase") from None


def tls_verify(server_url: str) -> bool:
    """How the agent's client checks the control plane's certificate: httpx's default CA
    bundle for https://; none for a plain-HTTP control plane, which never uses one (requests
    go to SERVER_URL alone, and redirects are not followed) and whose loading costs ~2.5 MB
    of RSS."""
    return urlsplit(server_url).scheme != "http"


async def run(settings: AgentSettings, on_ready: Callable[[dict[str, object]], None]) -> None:
    """Enrol if needed, serve last-good, follow desired state until SIGTERM/SIGINT."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # One HTTP client for the enrolment and every later request: each client loads a CA
    # bundle of its own, memory the agent would keep for days (~1 MB of its RSS measured).
    client = httpx.AsyncClient(
        timeout=TIMEOUT_S, limits=LIMITS, verify=tls_verify(settings.server_url)
    )
    try:
        await _run(settings, client, on_ready)
    finally:
        await client.aclose()


async def _run(
    s: AgentSettings,
    client: httpx.AsyncClient,
    on_ready: Callable[[dict[str, object]], None],
) -> None:
    from edgeshift.fleet.agent.trust import TufInstaller  # TUF only when it runs for real

    identity = load_identity(s.data_dir) or await enrol(s, client)
    if not (s.data_dir / "tuf" / "root.json").is_file():
        if s.root is None:
            raise ConfigError(f"{s.data_dir}/tuf/root.json is missing — give --root root.json")
        (s.data_dir / "tuf").mkdir(exist_ok=True)
        shutil.copyfile(s.root, s.data_dir / "tuf" / "root.json")
    key = load_private_key(base64.b64decode(identity.private_key))
    transport = DeviceTransport(
        s.server_url or identity.server_url, identity.device_id, key, client
    )
    fetcher = transport.fetcher()
    installer = TufInstaller(s.data_dir / "tuf", transport.server_url, fetcher)
    host = ServerHost(s.host, s.port, s.serve_options)
    options = s.options
    if options.crash_at is None and (crash := crash_phase_from_env()) is not None:
        options = AgentOptions(**{**options.__dict__, "crash_at": crash})
    if not options.agent_version:
        options = AgentOptions(**{**options.__dict__, "agent_version": __version__})
    agent = Agent(s.data_dir, transport, host, installer, options=options)
    await host.start()
    stop = asyncio.Event()
    try:
        await agent.recover()
        on_ready(
            {
                "event": "ready",
                "device_id": identity.device_id,
                "serving": f"http://{host.url}",
                "active": agent.active.artifact_id if agent.active else None,
                "phase": agent.journal.phase.value,
            }
        )
        runner = asyncio.create_task(agent.run(stop))
        assert host.serving is not None
        await asyncio.wait({runner, host.serving}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()  # SIGTERM stopped the server: stop the agent too
        await runner
    except FleetError:
        raise
    finally:
        stop.set()
        await host.close()
        await transport.aclose()
        fetcher.close()
