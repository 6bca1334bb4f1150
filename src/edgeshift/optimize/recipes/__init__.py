"""Recipes: each turns the user's fp32 model into one candidate variant (a file + how to run it).

One module per family; :data:`RECIPES` lists every recipe by name in the order the search
tries them. A quantizing recipe can rebuild itself with some nodes kept in float
(``exclude``), which is how accuracy recovery works.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.errors import OptimizeError
from edgeshift.optimize.manifest import HostInfo


@dataclass
class HeldOut:
    """The search's own accuracy check, for recipes that control accuracy themselves (NNCF's
    accuracy control): the held-out feeds and the metric's score of outputs for some of them."""

    feeds: list[dict[str, np.ndarray]]
    # (outputs of FEEDS[indices], concatenated on the sample axis; indices) -> the metric's score
    score: Callable[[dict[str, np.ndarray], Sequence[int]], float]
    original_score: float
    higher_is_better: bool
    budget: float  # the search's max drop, in the metric's unit (absolute)
    threads: int


@dataclass
class BuildContext:
    """Everything a recipe may use: the models, calibration feeds, the host, a scratch dir."""

    source_path: Path  # the user's model, as given
    repaired_path: Path  # the same model repaired for quantizers (model/repair.py)
    repaired: onnx.ModelProto
    workdir: Path
    calibration: list[dict[str, np.ndarray]]  # feed dicts, one per calibration batch
    host: HostInfo
    seed: int
    quick: bool
    is_transformer: bool
    cache: dict[str, Any] = field(default_factory=dict)  # per-search memo (calibration ranges)
    held_out: HeldOut | None = None  # set by the search once the reference has run


@dataclass
class Variant:
    """A built candidate: the model file and what open_backend needs to run it as intended."""

    model_path: Path
    backend: str
    runtime_precision: str  # what the runtime is asked for (fp32/bf16/fp16)
    options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # recipe settings, for the manifest


class Recipe(ABC):
    """One way to build a candidate. ``quantized`` recipes support ``exclude`` (float fallback)."""

    name: str
    family: str  # module name, recorded as the manifest's recipe
    backend: str
    precision: str  # the variant's precision label
    quantized: bool = False
    op_types: tuple[str, ...] = ()  # what a quantized recipe quantizes
    default: bool = True  # in the search unless asked for; False: only by --recipes

    def unavailable(self, ctx: BuildContext) -> str | None:
        """Why this recipe cannot run on this host (a skip reason), or None."""
        return None

    @abstractmethod
    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant: ...

    def quantizable_nodes(self, ctx: BuildContext) -> list[str]:
        """Names of the nodes this recipe quantizes, in graph order (recovery ranks them)."""
        return [n.name for n in ctx.repaired.graph.node if n.op_type in self.op_types]

    def alternatives(self, ctx: BuildContext) -> list[Recipe]:
        """Other settings of this recipe to try, in order, when it misses the budget
        (before any layer is kept in float)."""
        return []

    tag: str = ""  # tells the files of alternatives apart

    def quantized_nodes(self, ctx: BuildContext, variant: Variant) -> list[str]:
        """The nodes VARIANT really quantized (recovery ranks these); by default the op list."""
        return self.quantizable_nodes(ctx)

    def variant_path(self, ctx: BuildContext, exclude: Sequence[str]) -> Path:
        # One file per float set, not per count: recovery keeps the builds of several sets of
        # the same size (restore-one builds) and must not read one set's file as another's.
        suffix = ""
        if exclude:
            digest = hashlib.sha1("\n".join(sorted(exclude)).encode()).hexdigest()[:10]
            suffix = f"-f{len(exclude)}-{digest}"
        return ctx.workdir / f"{self.name}{self.tag}{suffix}.onnx"


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Silence the root-logger warnings onnxruntime.quantization prints on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _failing_node(exc: BaseException, model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The graph node a quantizer was working on when it raised, if it can be told.

    First a node whose name the error text (or the error it chains) quotes; then the
    innermost traceback frame holding a node of the graph in a local (quantizers raise
    from loops over nodes: ``node``, ``nncf_node``)."""
    by_name = {n.name: n for n in model.graph.node if n.name}
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 5:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    for text in texts:
        for word in text.replace("'", " ").replace('"', " ").split():
            node = by_name.get(word.strip(".,:;()[]"))
            if node is not None:
                return node
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            name: object
            if isinstance(value, onnx.NodeProto):
                name = value.name
            else:
                try:
                    name = getattr(value, "node_name", None)
                except Exception:  # a property that raises is no node
                    continue
            if isinstance(name, str) and name in by_name:
                return by_name[name]
    return None


def build_failure(
    recipe: Recipe,
    tool: str,
    exc: BaseException,
    model: onnx.ModelProto,
    unsupported_ops: Sequence[str] = (),
) -> OptimizeError:
    """A one-line OptimizeError for TOOL failing inside RECIPE's build: which recipe, which
    node (and op) when it can be told, the tool's own words, and what to do about it."""
    node = _failing_node(exc, model)
    where = f" at node {node.name} ({node.op_type})" if node is not None else ""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    ops = (
        f"; {tool} has no support for op(s) {', '.join(unsupported_ops)}" if unsupported_ops else ""
    )
    # Repair upgrades the opset to 13; a graph still below it is one the converter refused.
    if _default_opset(model) < 13:
        retry = "re-export the model at opset >= 13 and retry"
    else:
        retry = "simplify the model (onnxsim) and retry"
    fix = f"the other candidates are unaffected; leave {recipe.name} out with --recipes, or {retry}"
    return OptimizeError(
        f"{recipe.name}: {tool} could not quantize the model{where} ({cause}){ops}; {fix}"
    )


def all_recipes() -> list[Recipe]:
    """Every recipe, fastest-to-build first (the order the search tries them)."""
    from edgeshift.optimize.recipes.openvino_float import OpenVINOFloat
    from edgeshift.optimize.recipes.openvino_nncf_ac import OpenVINONNCFAccuracyControl
    from edgeshift.optimize.recipes.openvino_nncf_int8 import OpenVINONNCFInt8
    from edgeshift.optimize.recipes.ort_dynamic_int8 import OrtDynamicInt8
    from edgeshift.optimize.recipes.ort_float import OrtFloatOptimized
    from edgeshift.optimize.recipes.ort_fp16 import OrtFp16
    from edgeshift.optimize.recipes.ort_static_int8 import OrtStaticInt8

    return [
        OrtFloatOptimized(),
        OrtDynamicInt8(),
        OrtDynamicInt8(with_conv=True),
        OrtStaticInt8(),
        OrtStaticInt8(cnn_chain=True),
        OrtFp16(),
        OpenVINOFloat("fp32"),
        OpenVINOFloat("bf16"),
        OpenVINOFloat("fp16"),
        OpenVINONNCFInt8(),
        OpenVINONNCFAccuracyControl(),
    ]


def recipe_names() -> list[str]:
    return [r.name for r in all_recipes()]
