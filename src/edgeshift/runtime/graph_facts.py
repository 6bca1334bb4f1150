"""What serving needs from a model's graph beyond the runtime's own view of it: the activation
bytes per input byte (row-chunked runs, runtime/base.py) and the Gather index bounds (id
checks, serve/repository.py).

Both come from edgeshift.model, which loads onnx (with protobuf and ml_dtypes) and the static
analysis: ~15 MB of RSS that a process keeps once it has imported them. A process that has
not (the edge agent, which runs for days beside its model) reads them in a child process
instead (`python -m edgeshift.runtime.graph_facts MODEL`: 0.2 s of CPU for the fleet
benchmark's 5 MB model); one that has (the CLI, tests, notebooks) reads them in process.
Either way once per file: the answer is cached by path, size and modification time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from edgeshift.errors import EdgeshiftError, ModelError
from edgeshift.model.load import resolve_model_path
from edgeshift.runtime.base import analysed_activation_ratio

CHILD_TIMEOUT_S = 600.0  # the analysis of a large transformer takes seconds, not minutes


@dataclass(frozen=True)
class GraphFacts:
    activation_ratio: float  # peak activation bytes per input byte at batch 1
    index_bounds: Mapping[str, int]  # integer input -> N: its valid ids are [-N, N)


def graph_facts(model: str | Path) -> GraphFacts:
    """The facts of MODEL (a .onnx file or an artifact directory); ModelError when the file
    is not a readable ONNX graph (a truncated or corrupt file gets advice that fits it)."""
    path, _ = resolve_model_path(model)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc.strerror}) — check the path") from None
    return _cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _cached(path: str, size: int, mtime_ns: int) -> GraphFacts:
    if "onnx" in sys.modules:
        return compute_graph_facts(Path(path))
    return graph_facts_in_child(Path(path))


def compute_graph_facts(model_path: Path) -> GraphFacts:
    """The facts, read in this process (imports onnx and the analysis)."""
    from edgeshift.model.load import gather_index_bounds, load_model

    loaded = load_model(model_path, check=False, external_data=False)
    bounds = gather_index_bounds(loaded.proto.graph)
    del loaded
    return GraphFacts(analysed_activation_ratio(model_path), MappingProxyType(bounds))


def graph_facts_in_child(model_path: Path) -> GraphFacts:
    """The facts, read by a child process: this one never imports onnx."""
    argv = [sys.executable, "-m", "edgeshift.runtime.graph_facts", str(model_path)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _child_failed(model_path, type(exc).__name__) from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise _child_failed(model_path, f"exit {done.returncode}") from None
    if "error" in answer:
        raise ModelError(str(answer["error"]))
    bounds = {str(k): int(v) for k, v in answer["index_bounds"].items()}
    return GraphFacts(float(answer["activation_ratio"]), MappingProxyType(bounds))


def _child_failed(model_path: Path, reason: str) -> ModelError:
    return ModelError(
        f"{model_path.name}: reading its graph in a child process failed ({reason}) — check "
        "that the file is complete and that the device has memory to spare"
    )


def main(argv: list[str]) -> int:
    """Child entry: one JSON line on stdout, the facts or {"error": message}."""
    try:
        facts = compute_graph_facts(Path(argv[0]))
    except EdgeshiftError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    print(
        json.dumps(
            {"activation_ratio": facts.activation_ratio, "index_bounds": dict(facts.index_bounds)}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
