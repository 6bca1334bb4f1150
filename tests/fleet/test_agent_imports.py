"""The agent's memory (#16: <= 60 MB beside a bare ONNX Runtime process running the model)
rests on what its process imports. Each check runs in a fresh interpreter, since this one has
imported everything: the agent's modules, and then a real ServerHost serving, shadowing and
swapping models, must not pull in the libraries only other verbs need."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.fleet.agent_helpers import classifier_weights, make_artifact

# Libraries the agent does not run, with what pulled them in before: onnx (+ protobuf and
# ml_dtypes) through edgeshift.model's eager imports and the served model's graph read;
# psutil for one log line; the analysis, optimizer, catalog and planner through edgeshift.model
# and the other verbs; the rest are there to catch a new eager import.
NOT_IN_THE_AGENT = (
    "onnx",
    "google.protobuf",
    "ml_dtypes",
    "psutil",
    "edgeshift.model.analysis",
    "edgeshift.optimize",
    "edgeshift.targets",
    "edgeshift.plan",
    "edgeshift.cluster",
    "edgeshift.serve.grpc",
    "yaml",
    "scipy",
    "sqlalchemy",
    "alembic",
    "grpc",
    "openvino",
    "torch",
    "ray",
)


def _loaded_in_fresh_process(code: str) -> dict[str, object]:
    """Run CODE in a fresh interpreter; it prints one JSON object as its last line, to which
    the heavy modules found in sys.modules are added."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json as _json, sys as _sys
        _result["heavy"] = [m for m in {list(NOT_IN_THE_AGENT)!r} if m in _sys.modules]
        print(_json.dumps(_result))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_agent_entry_modules_import_no_heavy_library() -> None:
    result = _loaded_in_fresh_process(
        """
        import sys
        import edgeshift.cli.agent
        edgeshift.cli.agent.skip_unused_imports()  # as the agent command does first
        import edgeshift.fleet.agent.process, edgeshift.fleet.agent.trust
        import httpx
        import uvicorn
        unused = ("pygments", "rich.syntax", "watchfiles")
        _result = {"cli_only": [m for m in unused if sys.modules.get(m) is not None],
                   "client": type(httpx.Client()).__name__}
        """
    )
    assert result["heavy"] == []
    assert result["cli_only"] == []  # httpx's command line and uvicorn's watcher stayed out
    assert result["client"] == "Client"  # and httpx itself works


def test_serving_shadowing_and_swapping_models_import_no_heavy_library(tmp_path: Path) -> None:
    # onnx builds the artifacts here, in this process; the child only serves them.
    first = make_artifact(tmp_path / "first", seed=1)
    second = make_artifact(tmp_path / "second", seed=2)
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    result = _loaded_in_fresh_process(
        f"""
        import asyncio
        from pathlib import Path

        import httpx

        from edgeshift.fleet.agent.host import ServerHost
        from edgeshift.serve.repository import ServeOptions

        async def scenario():
            host = ServerHost(port=0, options=ServeOptions(threads=1))
            await host.start()
            body = {{"inputs": [{{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                "data": {x.ravel().tolist()!r}}}]}}
            url = f"http://{{host.url}}/v2/models/clf/infer"
            try:
                await host.activate(Path({str(first)!r}), "clf")
                async with httpx.AsyncClient() as client:
                    comparator = await host.start_shadow(Path({str(second)!r}))
                    for _ in range(5):
                        (await client.post(url, json=body)).raise_for_status()
                    await asyncio.sleep(0.05)
                    samples = comparator.samples
                    await host.stop_shadow()
                    await host.activate(Path({str(second)!r}), "clf")
                    answer = (await client.post(url, json=body)).json()
            finally:
                await host.close()
            return samples, answer["outputs"][0]["data"]

        samples, data = asyncio.run(scenario())
        _result = {{"samples": samples, "data": data}}
        """
    )
    assert result["heavy"] == []
    assert isinstance(result["samples"], int) and result["samples"] >= 1  # the shadow ran
    # the swapped-in model answers, with the weights of seed 2
    np.testing.assert_allclose(result["data"], (x @ classifier_weights(2)).ravel(), rtol=1e-5)


def test_the_ca_bundle_is_loaded_only_for_an_https_control_plane() -> None:
    from edgeshift.fleet.agent.process import tls_verify

    assert tls_verify("https://fleet.example:8443") is True  # httpx's CA bundle, verified
    assert tls_verify("HTTPS://fleet.example") is True
    assert tls_verify("http://10.77.0.1:8080") is False  # plain HTTP: no TLS to verify
    assert tls_verify("") is True  # anything else keeps verification on


def test_edgeshift_agent_registers_its_verb_alone() -> None:
    result = _loaded_in_fresh_process(
        """
        import sys
        sys.argv = ["edgeshift", "agent", "--help"]
        import edgeshift.cli.main
        _result = {"verbs": sorted(c.name for c in edgeshift.cli.main.app.registered_commands)}
        """
    )
    assert result["heavy"] == [] and result["verbs"] == ["agent"]
