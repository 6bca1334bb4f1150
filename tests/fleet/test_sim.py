"""The simulator is the real protocol: 20 simulated devices (the real Agent, DeviceTransport
and TufInstaller; only the model is simulated) enrol with the real control plane over a socket,
install a first release, then complete a 2-wave rollout of a second one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgeshift.fleet.agent.agent import AgentOptions
from edgeshift.fleet.bundle import pack
from edgeshift.fleet.client import OperatorClient
from edgeshift.fleet.schema import Phase, RolloutInfo, RolloutSpec, RolloutState
from edgeshift.fleet.server import FleetServerThread, FleetSettings
from edgeshift.fleet.sim import ShardedSimFleet, SimFleet

OPTIONS = AgentOptions(
    poll_wait_s=5.0,
    backoff_min_s=0.05,
    backoff_max_s=0.5,
    report_interval_s=0.5,
    trial_min_requests=5,
)


def _publish(op: OperatorClient, tmp: Path, version: int, sim: dict[str, object]) -> str:
    src = tmp / f"src-{version}"
    src.mkdir()
    (src / "model.onnx").write_bytes(f"weights v{version}".encode() * 100)
    (src / "manifest.json").write_text(json.dumps({"model_file": "model.onnx", "sim": sim}))
    bundle = tmp / f"clf-{version}.tar"
    pack(src, bundle)
    return op.publish_artifact(bundle, "clf", version).ref.artifact_id


async def _until_done(op: OperatorClient, rollout_id: str, timeout_s: float) -> RolloutInfo:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        info = await asyncio.to_thread(op.get_rollout, rollout_id)
        if info.state not in (RolloutState.PENDING, RolloutState.RUNNING):
            return info
        assert loop.time() < deadline, f"rollout stuck: {info.state} wave {info.wave}"
        await asyncio.sleep(0.2)


def _spec(artifact_id: str, waves: list[float]) -> RolloutSpec:
    return RolloutSpec(
        artifact_id=artifact_id,
        waves=waves,
        soak_s=0.5,
        install_timeout_s=30,
        shadow_s=0.3,
        shadow_min_requests=3,
        trial_s=0.3,
    )


@pytest.mark.parametrize("tuf_bundles", [True, False], ids=["bundled", "per-file"])
def test_twenty_simulated_agents_complete_a_two_wave_rollout(
    tmp_path: Path, tuf_bundles: bool
) -> None:
    settings = FleetSettings(data_dir=tmp_path / "cp", port=0, tick_s=0.1, recheck_s=0.5)
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as op,
    ):
        root = tmp_path / "root.json"
        root.write_bytes(op.root_json())
        v1 = _publish(op, tmp_path, 1, {"latency_ms": 1.0})
        v2 = _publish(op, tmp_path, 2, {"latency_ms": 1.0})

        async def scenario() -> None:
            sims = SimFleet(
                fleet.url,
                fleet.operator_token,
                root,
                tmp_path / "devices",
                options=OPTIONS,
                tuf_bundles=tuf_bundles,
            )
            stop = asyncio.Event()
            traffic = asyncio.create_task(sims.traffic(stop, rate_hz=50))
            try:
                await sims.enrol(20)
                sims.start()
                first = await asyncio.to_thread(op.create_rollout, _spec(v1, [100]))
                assert (await _until_done(op, first.rollout_id, 60)).state is RolloutState.COMPLETED
                assert sims.serving() == {v1: 20}
                sims.reset_counts()
                second = await asyncio.to_thread(op.create_rollout, _spec(v2, [50, 100]))
                info = await _until_done(op, second.rollout_id, 60)
                assert info.state is RolloutState.COMPLETED, info.reason
                assert [w.devices for w in info.waves] == [10, 10]  # new devices per wave
                assert all(g.passed for g in info.gates)
                assert sims.serving() == {v2: 20}
                assert sims.phases() == {Phase.COMMITTED: 20}
                answered, sent = sims.totals()
                assert sent > 0 and answered == sent
                devices = await asyncio.to_thread(op.list_devices)
                assert {d.reported.active for d in devices if d.reported} == {v2}
                # Each install's TUF refresh came in one bundle, or (the A/B) none did.
                bundles = [
                    d.agent.installer.verifier._fetcher.bundles_fetched  # type: ignore[union-attr]
                    for d in sims.devices
                    if d.agent is not None
                ]
                assert all(n >= 2 for n in bundles) if tuf_bundles else not any(bundles)
            finally:
                stop.set()
                await traffic
                await sims.aclose()

        asyncio.run(scenario())


def test_a_sharded_fleet_runs_its_devices_in_worker_processes(tmp_path: Path) -> None:
    settings = FleetSettings(data_dir=tmp_path / "cp", port=0, tick_s=0.1, recheck_s=0.5)
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as op,
    ):
        root = tmp_path / "root.json"
        root.write_bytes(op.root_json())
        v1 = _publish(op, tmp_path, 1, {"latency_ms": 1.0})

        async def scenario() -> None:
            sims = ShardedSimFleet(
                fleet.url,
                fleet.operator_token,
                root,
                tmp_path / "devices",
                options=OPTIONS,
                procs=2,
            )
            stop = asyncio.Event()
            try:
                await sims.enrol(5)
                assert len(sims.base_rss_kb) == 2
                await sims.start()
                traffic = asyncio.create_task(sims.traffic(stop, rate_hz=50))
                first = await asyncio.to_thread(op.create_rollout, _spec(v1, [100]))
                info = await _until_done(op, first.rollout_id, 60)
                assert info.state is RolloutState.COMPLETED, info.reason
                assert await sims.serving() == {v1: 5}
                assert await sims.phases() == {Phase.COMMITTED: 5}
                stop.set()
                await traffic
                answered, sent = await sims.totals()
                assert sent > 0 and answered <= sent
                assert len(await asyncio.to_thread(op.list_devices)) == 5
                names = sorted(p.name for p in (tmp_path / "devices").iterdir())
                assert names == [f"sim-{i:05d}" for i in range(5)]  # one numbering, two shards
            finally:
                stop.set()
                await sims.aclose()

        asyncio.run(scenario())
