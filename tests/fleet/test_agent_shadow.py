"""The served model's observer hook (serve/repository.py) and the agent's ServerHost: local
requests over a real socket are observed, a candidate runs in shadow unserved, and a swap
keeps answering."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np

from edgeshift.fleet.agent.host import ServerHost
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.protocol import InferRequest
from edgeshift.serve.repository import ModelRepository, ModelSource, ServeOptions

from .agent_helpers import classifier_weights, make_artifact

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8 - 0.3


def test_an_observer_sees_each_request_feeds_and_outputs(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "m", seed=1)
    seen: list[tuple[dict, dict | None, float]] = []

    async def scenario() -> None:
        repo = ModelRepository(
            {"clf": ModelSource("clf", {1: artifact})}, ServeOptions(threads=1), ServerMetrics()
        )
        await repo.load("clf")
        served = repo.get("clf")
        assert served.observer is None  # nothing set: the hook costs one attribute check
        await served.enqueue(InferRequest(inputs={"x": X}, datatypes={"x": "FP32"}))
        assert seen == []
        repo.observers["clf"] = lambda feeds, outputs, elapsed_s: seen.append(
            (feeds, outputs, elapsed_s)
        )
        await repo.load("clf")  # observers go to every version as it loads
        out = await repo.get("clf").enqueue(InferRequest(inputs={"x": X}, datatypes={"x": "FP32"}))
        await asyncio.sleep(0)
        await repo.close()
        assert len(seen) == 1
        feeds, outputs, elapsed_s = seen[0]
        np.testing.assert_array_equal(feeds["x"], X)
        assert outputs is not None
        np.testing.assert_allclose(outputs["scores"], out["scores"])
        np.testing.assert_allclose(outputs["scores"], X @ classifier_weights(1), rtol=1e-5)
        assert elapsed_s > 0

    asyncio.run(scenario())


def _infer(client: httpx.AsyncClient, url: str) -> httpx.Response:
    body = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}]
    }
    return client.post(f"http://{url}/v2/models/clf/infer", json=body)  # type: ignore[return-value]


def test_server_host_serves_shadows_and_swaps_over_a_real_socket(tmp_path: Path) -> None:
    same = make_artifact(tmp_path / "same", seed=1)
    also_same = make_artifact(tmp_path / "also", seed=1)
    other = make_artifact(tmp_path / "other", seed=2)

    async def scenario() -> None:
        host = ServerHost(port=0, options=ServeOptions(threads=1))
        await host.start()
        try:
            await host.activate(same, "clf")
            async with httpx.AsyncClient() as client:
                comparator = await host.start_shadow(also_same)
                for _ in range(10):
                    assert (await _infer(client, host.url)).status_code == 200
                await asyncio.sleep(0.05)
                assert comparator.samples >= 5 and comparator.agreement == 1.0
                assert comparator.drift == 0.0
                disagreeing = await host.start_shadow(other)
                for _ in range(10):
                    assert (await _infer(client, host.url)).status_code == 200
                await asyncio.sleep(0.05)
                assert disagreeing.samples >= 5
                assert disagreeing.drift is not None and disagreeing.drift > 0.01
                await host.stop_shadow()
                # shadow answers never reach a client; the served model is still seed 1
                answer = (await _infer(client, host.url)).json()["outputs"][0]["data"]
                np.testing.assert_allclose(answer, (X @ classifier_weights(1)).ravel(), rtol=1e-5)
                # a swap while requests are in flight: every one is answered
                pending = [asyncio.ensure_future(_infer(client, host.url)) for _ in range(20)]
                await host.activate(other, "clf")
                pending += [asyncio.ensure_future(_infer(client, host.url)) for _ in range(20)]
                statuses = [r.status_code for r in await asyncio.gather(*pending)]
                assert statuses == [200] * 40
                answer = (await _infer(client, host.url)).json()["outputs"][0]["data"]
                np.testing.assert_allclose(answer, (X @ classifier_weights(2)).ravel(), rtol=1e-5)
            stats = host.stats().stats()
            assert stats.requests == 62 and stats.errors == 0 and stats.p95_ms is not None
        finally:
            await host.close()

    asyncio.run(scenario())
