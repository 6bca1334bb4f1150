"""The fleet's fault campaign (benchmarks/fleet.py --faults): kill -9 of real agent processes at
random moments of updates, partitions between simulated agents and the control plane
mid-update (fleet/netproxy.py), bad and good releases as short rollouts, and every TUF attack
case of fleet/tuf_attacks.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgeshift.fleet.agent.agent import AgentOptions
from edgeshift.fleet.client import OperatorClient
from edgeshift.fleet.netproxy import NetProxy, ProxyConfig
from edgeshift.fleet.schema import EnrolmentTokenSpec, RolloutSpec, RolloutState
from edgeshift.fleet.server import FleetServerThread, FleetSettings
from edgeshift.fleet.sim import SimFleet
from edgeshift.fleet.tuf_attacks import attack_cases, run_case

sys.path.insert(0, str(Path(__file__).parent))
from fleet import EDGESHIFT, IN_FEATURES, make_mlp, publish

SIM_OPTIONS = AgentOptions(
    poll_wait_s=10.0,
    backoff_min_s=0.1,
    backoff_max_s=1.0,
    retry_failed_s=2.0,
    report_interval_s=0.5,
    trial_min_requests=5,
)
DONE = {
    RolloutState.COMPLETED,
    RolloutState.ABORTED,
    RolloutState.CANCELLED,
    RolloutState.ROLLED_BACK,
}


def short_spec(artifact_id: str, waves: list[float], soak_s: float) -> RolloutSpec:
    return RolloutSpec(
        artifact_id=artifact_id,
        waves=waves,
        soak_s=soak_s,
        install_timeout_s=20,
        shadow_s=0.5,
        shadow_min_requests=5,
        trial_s=0.5,
    )


async def wait_done(op: OperatorClient, rollout_id: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        info = await asyncio.to_thread(op.get_rollout, rollout_id)
        if info.state in DONE or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.2)


async def settle(sims: SimFleet, want: str, timeout_s: float) -> bool:
    """True once every simulated device serves WANT."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sims.serving() == {want: len(sims.devices)}:
            return True
        await asyncio.sleep(0.2)
    return False


# --- bad and good releases, partitions (simulated devices, real control plane) ---------------

BAD_KINDS: list[tuple[str, dict[str, Any]]] = [
    ("wrong outputs", {"outputs": "wrong"}),
    ("slow model", {"latency_ms": 8.0}),
    ("failing model", {"fail": True}),
    ("tampered bundle", {}),
]


def tamper(data_dir: Path, name: str, version: int) -> None:
    """Flip one byte of the stored target (same length): only verification can tell."""
    (path,) = (data_dir / "tuf" / "targets" / name).glob(f"*.{version}.tar")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


async def releases_and_partitions(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    settings = FleetSettings(data_dir=work / "cp", port=0, tick_s=0.1, recheck_s=0.5)
    out: dict[str, Any] = {}
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as op,
    ):
        root = work / "root.json"
        root.write_bytes(op.root_json())
        host, port = fleet.url.split("//")[1].rsplit(":", 1)
        # On its own thread and loop: set() and cut() are called from here through to_thread.
        proxy = NetProxy(ProxyConfig(upstream_host=host, upstream_port=int(port))).start_thread()
        proxy_url = f"http://127.0.0.1:{proxy.port}"
        sims = SimFleet(proxy_url, fleet.operator_token, root, work / "sim", options=SIM_OPTIONS)
        stop = asyncio.Event()
        traffic = asyncio.create_task(sims.traffic(stop, rate_hz=40))
        version = 0

        def release(sim: dict[str, Any]) -> tuple[str, int]:
            nonlocal version
            version += 1
            src = make_mlp(work / f"src-{version}", hidden=16, seed=version, sim=sim)
            return publish(op, work, "clf", version, src), version

        try:
            await sims.enrol(args.fleet_size)
            sims.start()
            current, _ = release({})
            first = await asyncio.to_thread(op.create_rollout, short_spec(current, [100], 0))
            await wait_done(op, first.rollout_id, 120)
            assert await settle(sims, current, 60), f"setup: {sims.serving()}"
            rng = random.Random(1)
            # Bad and good, interleaved; a bad one must end ABORTED with every device back on
            # the last good one; a good one must not be rolled back.
            kinds = [("good", {})] * args.good + [BAD_KINDS[i % 4] for i in range(args.bad)]
            rng.shuffle(kinds)
            rows: list[dict[str, Any]] = []
            sims.reset_counts()
            for kind, sim in kinds:
                artifact, v = await asyncio.to_thread(release, sim)
                if kind == "tampered bundle":
                    tamper(settings.data_dir, "clf", v)
                t0 = time.monotonic()
                made = await asyncio.to_thread(
                    op.create_rollout, short_spec(artifact, [50, 100], args.release_soak)
                )
                info = await wait_done(op, made.rollout_id, 120)
                bad = kind != "good"
                if info.state is RolloutState.COMPLETED:
                    current = artifact
                back = await settle(sims, current, 60)
                rows.append(
                    {
                        "kind": kind,
                        "state": info.state.value,
                        "reason": info.reason[:120],
                        "stopped_and_rolled_back": bad
                        and info.state is RolloutState.ABORTED
                        and back,
                        "rolled_back": info.state
                        in (RolloutState.ABORTED, RolloutState.ROLLED_BACK),
                        "all_serving": back,
                        "s": round(time.monotonic() - t0, 1),
                    }
                )
            answered, sent = sims.totals()
            out["releases"] = rows
            out["release_requests"] = (answered, sent)
            out["release_without_model"] = sims.serving().get(None, 0)

            # Partitions: mid-update, cut every connection and refuse new ones for 0.5-3 s.
            parts: list[dict[str, Any]] = []
            for _ in range(args.partitions):
                artifact, _v = await asyncio.to_thread(release, {})
                made = await asyncio.to_thread(op.create_rollout, short_spec(artifact, [100], 0))
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                await asyncio.to_thread(proxy.set, mode="refuse")
                await asyncio.to_thread(proxy.cut)
                down_s = rng.uniform(0.5, 3.0)
                await asyncio.sleep(down_s)
                await asyncio.to_thread(proxy.set, mode="pass")
                t0 = time.monotonic()
                info = await wait_done(op, made.rollout_id, 120)
                if info.state is RolloutState.COMPLETED:
                    current = artifact
                ok = await settle(sims, current, 60)
                parts.append(
                    {
                        "down_s": round(down_s, 2),
                        "state": info.state.value,
                        "reason": info.reason[:160],
                        "all_serving": ok,
                        "recovered_s": round(time.monotonic() - t0, 1),
                    }
                )
            out["partitions"] = parts
            out["partition_without_model"] = sims.serving().get(None, 0)
        finally:
            stop.set()
            await traffic
            await sims.aclose()
            await asyncio.to_thread(proxy.stop_thread)
    return out


# --- kill -9 of real agent processes -----------------------------------------------------------


def start_agent(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"agent exited with {proc.wait()} before its ready line")
    return proc, str(json.loads(line)["serving"])


def answers(base: str, timeout_s: float) -> bool:
    """The agent's local server answers an inference (a good model serves)."""
    x = np.zeros((1, IN_FEATURES), np.float32).ravel().tolist()
    body = {"inputs": [{"name": "x", "shape": [1, IN_FEATURES], "datatype": "FP32", "data": x}]}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"{base}/v2/models/clf/infer", json=body, timeout=5)
            if r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 10]:
                return True
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    return False


def kills(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    settings = FleetSettings(data_dir=work / "cp", port=0, tick_s=0.1, recheck_s=0.5)
    rng = random.Random(2)
    rows: list[dict[str, Any]] = []
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as op,
    ):
        root = work / "root.json"
        root.write_bytes(op.root_json())
        argvs: list[list[str]] = []
        procs: list[tuple[subprocess.Popen[str], str]] = []
        for i in range(args.kill_parallel):
            token = op.create_enrolment_token(EnrolmentTokenSpec()).token
            d = work / f"agent-{i}"
            base = [EDGESHIFT, "agent", "--server", fleet.url, "--data-dir", str(d),
                    "--port", "0", "--threads", "1", "--json"]  # fmt: skip
            procs.append(
                start_agent([*base, "--enrol-token", token, "--root", str(root), "--name", f"k{i}"])
            )
            argvs.append(base)
        version = 0

        def release() -> str:
            nonlocal version
            version += 1
            # Every release the same function (shadow agrees): a distinct, good artifact.
            src = make_mlp(work / f"src-{version}", hidden=64 + version, seed=1, live=64)
            return publish(op, work, "clf", version, src)

        first = op.create_rollout(short_spec(release(), [100], 0))
        asyncio.run(wait_done(op, first.rollout_id, 120))
        try:
            while len(rows) < args.kills:
                made = op.create_rollout(short_spec(release(), [100], 0))
                t0 = time.monotonic()
                delays = sorted((rng.uniform(0.0, 3.0), i) for i in range(len(procs)))
                for delay, i in delays:
                    time.sleep(max(0.0, delay - (time.monotonic() - t0)))
                    proc, _ = procs[i]
                    journal = work / f"agent-{i}" / "journal.json"
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    try:
                        phase = json.loads(journal.read_text()).get("phase", "?")
                    except (OSError, ValueError):
                        phase = "no journal"
                    procs[i] = start_agent(argvs[i])
                    rows.append({"phase": phase, "ok": None, "i": i})
                for row in rows[-len(procs) :]:
                    row["ok"] = answers(procs[row["i"]][1], 60)
                info = asyncio.run(wait_done(op, made.rollout_id, 120))
                rows[-1]["rollout"] = info.state.value
        finally:
            for proc, _ in procs:
                proc.terminate()
            for proc, _ in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    by_phase: dict[str, int] = {}
    for r in rows:
        by_phase[r["phase"]] = by_phase.get(r["phase"], 0) + 1
    return {
        "kills": len(rows),
        "came_back_serving": sum(1 for r in rows if r["ok"]),
        "killed_in_phase": by_phase,
        "rollouts": [r.get("rollout") for r in rows if r.get("rollout")],
    }


# --- the campaign -----------------------------------------------------------------------------


def tuf_attacks(work: Path) -> dict[str, Any]:
    """Every case twice: metadata fetched per file, and in one bundle as agents fetch it."""
    refused, failures = 0, []
    cases = attack_cases()
    for bundled in (False, True):
        for n, case in enumerate(cases):
            d = work / f"attack-{n}{'-bundled' if bundled else ''}"
            d.mkdir(parents=True)
            try:
                run_case(case, d, bundled=bundled)
                refused += 1
            except AssertionError as exc:
                failures.append(f"{'bundled: ' if bundled else ''}{str(exc)[:200]}")
    return {"cases": 2 * len(cases), "refused": refused, "failures": failures}


def run_faults(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"tuf": tuf_attacks(work / "tuf")}
    t0 = time.monotonic()
    out.update(asyncio.run(releases_and_partitions(args, work / "rel")))
    out["releases_wall_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    out["kill"] = kills(args, work / "kill") if args.kills else {"kills": 0, "came_back_serving": 0}
    out["kill_wall_s"] = round(time.monotonic() - t0, 1)
    return out


def print_faults(f: dict[str, Any]) -> None:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    rel = f.get("releases", [])
    bad = [r for r in rel if r["kind"] != "good"]
    good = [r for r in rel if r["kind"] == "good"]
    stopped = sum(r["stopped_and_rolled_back"] for r in bad)
    good_rb = sum(r["rolled_back"] for r in good)
    parts = f.get("partitions", [])
    parts_ok = sum(1 for p in parts if p["all_serving"])
    parts_done = sum(1 for p in parts if p["state"] == "completed")
    k = f["kill"]
    tuf = f["tuf"]
    without = f.get("release_without_model", 0) + f.get("partition_without_model", 0)
    print("\n## Fault campaign")
    print(f"{'fault':<46} {'result':>24}  {'goal':<22} result")
    rows = [
        ("kill -9 at random points (real agents)", f"{k['came_back_serving']}/{k['kills']} back serving",
         "all back serving, >= 200", met(k["kills"] >= 200 and k["came_back_serving"] == k["kills"])),
        ("partitions mid-update (netproxy)", f"{parts_ok}/{len(parts)} all serving after",
         "all survive, >= 50", met(len(parts) >= 50 and parts_ok == len(parts))),
        ("bad releases stopped and rolled back", f"{stopped}/{len(bad)}",
         ">= 95%, >= 20", met(len(bad) >= 20 and stopped >= 0.95 * len(bad))),
        ("good releases rolled back", f"{good_rb}/{len(good)}", "<= 1%, >= 20",
         met(len(good) >= 20 and good_rb <= 0.01 * len(good))),
        ("devices left without a serving model", str(without), "0", met(without == 0)),
        ("TUF attack cases refused (per file + bundled)", f"{tuf['refused']}/{tuf['cases']}", "all",
         met(tuf["refused"] == tuf["cases"])),
    ]  # fmt: skip
    for name, value, goal, result in rows:
        print(f"{name:<46} {value:>24}  {goal:<22} {result}")
    for kind in sorted({r["kind"] for r in rel}):
        these = [r for r in rel if r["kind"] == kind]
        states: dict[str, int] = {}
        for r in these:
            states[r["state"]] = states.get(r["state"], 0) + 1
        print(f"  {kind:<20} n={len(these):<3} states {states}  median "
              f"{statistics.median(r['s'] for r in these):.1f} s per rollout")  # fmt: skip
    if parts:
        print(f"  partitions: median down {statistics.median(p['down_s'] for p in parts):.2f} s, "
              f"median recovered {statistics.median(p['recovered_s'] for p in parts):.1f} s after the link returned")  # fmt: skip
    if parts:
        print(
            f"  partitions: {parts_done}/{len(parts)} of their (good) rollouts completed; the others:"
        )
        for p in parts:
            if p["state"] != "completed":
                print(f"    {p['state']} after {p['down_s']} s down: {p.get('reason', '')}")
    if k.get("killed_in_phase"):
        print(f"  kill -9: journal phase at the kill {k['killed_in_phase']}")
    print(f"  wall: releases+partitions {f['releases_wall_s']} s, kills {f['kill_wall_s']} s")
