"""A link that drops mid-update delays the install; it never fails it. Only a real
verification failure (ArtifactVerificationError) does."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

from edgeshift.errors import ArtifactVerificationError, FleetError
from edgeshift.fleet.agent.agent import Agent
from edgeshift.fleet.agent.transport import SignedFetcher
from edgeshift.fleet.agent.trust import TufInstaller
from edgeshift.fleet.auth import new_private_key
from edgeshift.fleet.schema import ArtifactRef, DeviceReport, Phase
from edgeshift.fleet.tuf_repo import TufRepository

from .agent_helpers import LocalInstaller
from .test_agent_core import FAST, Rig, _settled


class FlakyInstaller(LocalInstaller):
    """verify_bundle fails as the real TufInstaller does while its TUF refresh cannot reach
    the control plane (FleetError 503), UNREACHABLE times, then checks for real."""

    def __init__(self, unreachable: int) -> None:
        super().__init__()
        self.unreachable = unreachable
        self.calls = 0

    def verify_bundle(self, ref: ArtifactRef, bundle_path: Path) -> None:
        self.calls += 1
        if self.calls <= self.unreachable:
            raise FleetError("TUF metadata unreachable (ConnectError); retry when back", 503)
        super().verify_bundle(ref, bundle_path)


def _flaky_rig(tmp_path: Path, unreachable: int) -> tuple[Rig, FlakyInstaller]:
    rig = Rig(tmp_path, FAST)
    installer = FlakyInstaller(unreachable)
    rig.installer = installer
    return rig, installer


def test_an_unreachable_tuf_refresh_delays_the_install_and_never_reports_failed(
    tmp_path: Path,
) -> None:
    rig, installer = _flaky_rig(tmp_path, unreachable=4)
    v1 = rig.artifact(1, seed=1)

    async def scenario() -> Agent:
        agent = rig.agent()
        g1 = rig.want(v1)
        await rig.until(agent, _settled(agent, g1, Phase.COMMITTED))
        await rig.until(agent, lambda: rig.transport.reports[-1].phase is Phase.COMMITTED)
        return agent

    agent = asyncio.run(scenario())
    assert installer.calls == 5  # retried with backoff until the link came back
    assert agent.journal.failures == 0 and agent.journal.error == ""
    assert agent.journal.last_good_ref == v1 and rig.host.active_slot == "a"
    seen = rig.transport.phases()
    assert "failed" not in seen
    assert "verifying" in seen
    assert len(rig.transport.downloads) == 1  # the bundle was kept, not fetched again


def test_a_real_verification_failure_still_fails_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FAST)
    v1, v2 = rig.artifact(1, seed=1), rig.artifact(2, seed=2)

    async def scenario() -> Agent:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        rig.installer.expired = True
        g2 = rig.want(v2)
        await rig.until(agent, _settled(agent, g2, Phase.FAILED))
        return agent

    agent = asyncio.run(scenario())
    assert "expired" in agent.journal.error
    assert rig.host.active_slot == "a"


def test_the_real_installer_reports_an_unreachable_refresh_as_the_link(tmp_path: Path) -> None:
    """What the agent's retry relies on: TufInstaller.verify_bundle raises FleetError 503,
    not ArtifactVerificationError, when the control plane cannot be reached."""
    repo = TufRepository.open(tmp_path / "repo", now=1_700_000_000.0)
    metadata = tmp_path / "device"
    metadata.mkdir()
    (metadata / "root.json").write_bytes(repo.root_json())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fetcher = SignedFetcher(f"http://127.0.0.1:{port}", "dev-1", new_private_key())
    installer = TufInstaller(metadata, f"http://127.0.0.1:{port}", fetcher)
    ref = ArtifactRef(
        artifact_id="clf-v1",
        name="clf",
        version=1,
        target_path="clf/1.tar",
        length=10,
        sha256="0" * 64,
    )
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(b"x" * 10)
    try:
        with pytest.raises(FleetError) as err:
            installer.verify_bundle(ref, bundle)
    finally:
        fetcher.close()
    assert err.value.status == 503
    assert not isinstance(err.value, ArtifactVerificationError)


def test_a_report_the_link_dropped_is_sent_again_after_backoff_not_an_interval(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, dataclasses.replace(FAST, report_interval_s=30.0))
    v1 = rig.artifact(1, seed=1)
    send = rig.transport.report
    dropped: list[object] = []

    async def drop_first_committed(report: object) -> None:
        assert isinstance(report, DeviceReport)
        if report.phase is Phase.COMMITTED and not dropped:
            dropped.append(report)  # a keep-alive connection the server had just closed
            raise FleetError("control plane unreachable (RemoteProtocolError)", 503)
        await send(report)

    rig.transport.report = drop_first_committed  # type: ignore[method-assign]

    async def scenario() -> None:
        agent = rig.agent()
        g1 = rig.want(v1)
        await rig.until(agent, _settled(agent, g1, Phase.COMMITTED))
        # well inside the 30 s report interval
        await rig.until(
            agent, lambda: rig.transport.reports[-1].phase is Phase.COMMITTED, timeout_s=5
        )

    asyncio.run(scenario())
    assert dropped


def test_idle_connections_outlive_a_report_interval_and_expire_before_the_server_drops_them() -> (
    None
):
    """A device's steady reports reuse one connection; the agent drops an idle one before the
    control plane's keep-alive closes it (equal timeouts raced: RemoteProtocolError)."""
    from edgeshift.fleet.agent.agent import AgentOptions
    from edgeshift.fleet.agent.transport import LIMITS
    from edgeshift.fleet.server import KEEP_ALIVE_S

    assert LIMITS.keepalive_expiry is not None
    assert AgentOptions().report_interval_s < LIMITS.keepalive_expiry < KEEP_ALIVE_S - 10


def test_downloads_read_the_socket_in_large_pieces() -> None:
    """transport.py raises httpcore's 64 KiB read size for the agent's downloads; this fails
    when an httpcore upgrade moved or renamed the attribute (the setting would silently not
    apply)."""
    import httpcore

    from edgeshift.fleet.agent.transport import DOWNLOAD_READ_BYTES

    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == DOWNLOAD_READ_BYTES > 64 * 1024
