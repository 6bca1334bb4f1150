"""Read an ONNX model file, or an edgeshift artifact directory, with clear errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshift.errors import ConfigError, ModelError

if TYPE_CHECKING:
    # onnx (with protobuf and ml_dtypes, ~12 MB of RSS) loads only when a graph is read:
    # resolve_model_path and the manifest checks serve the runtime path without it.
    import onnx

MANIFEST_NAME = "manifest.json"


@dataclass
class LoadedModel:
    """An ONNX model in memory, where it came from, and its artifact manifest if any."""

    path: Path  # the .onnx file itself (runtimes load from here, external data beside it)
    proto: onnx.ModelProto
    manifest: dict[str, Any] | None = None  # manifest.json of an artifact directory

    @property
    def artifact_dir(self) -> Path | None:
        return self.path.parent if self.manifest is not None else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a manifest may set: the options `edgeshift optimize` records (Backend.runtime_options)
# and their types. Anything else is refused rather than passed to a runtime: options that
# write files (ORT's optimized_model_path, profiling, OpenVINO's CACHE_DIR) must never come
# from an artifact, which may have come from anywhere.
MANIFEST_RUNTIME_OPTIONS: dict[str, tuple[type, ...]] = {
    "precision": (str,),
    "graph_optimization_level": (str,),
    "allow_spinning": (bool,),
    "performance_hint": (str,),
    "num_streams": (int,),
}


def check_runtime_options(options: Any, where: str) -> None:
    """Refuse manifest runtime options outside :data:`MANIFEST_RUNTIME_OPTIONS` (ConfigError)."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: 'runtime_options' must be an object — rebuild the artifact")
    for key, value in options.items():
        allowed = MANIFEST_RUNTIME_OPTIONS.get(key)
        if allowed is None:
            raise ConfigError(
                f"{where}: runtime option {str(key)[:60]!r} is not allowed in a manifest (only "
                f"{', '.join(MANIFEST_RUNTIME_OPTIONS)}) — remove it or rebuild the artifact"
            )
        if not isinstance(value, allowed) or (allowed == (int,) and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: runtime option {key!r} must be of type {allowed[0].__name__} — "
                "fix it or rebuild the artifact"
            )


def _inside_artifact(artifact: Path, model_file: str) -> Path:
    """ARTIFACT/MODEL_FILE, refused when it leaves the artifact directory: an absolute path,
    ``..``, or a symlink to elsewhere."""
    model_path = artifact / model_file
    root = artifact.resolve()
    escaped = Path(model_file).is_absolute() or ".." in Path(model_file).parts
    if not escaped:
        try:
            model_path.resolve().relative_to(root)
        except ValueError:
            escaped = True
    if escaped:
        shown = Path(model_file).name if Path(model_file).is_absolute() else model_file[:100]
        raise ConfigError(
            f"artifact {artifact.name}: model_file {shown!r} points outside the "
            "artifact directory — keep the model file inside it"
        )
    return model_path


def resolve_model_path(path: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """The .onnx file behind PATH (a file, or an artifact directory) and its manifest."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model not found: {p} — check the path (a .onnx file or an artifact dir)")
    if p.is_file():
        return p, None
    manifest_path = p / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{manifest_path} is not valid JSON ({exc.msg} at line {exc.lineno}) — "
                "re-run `edgeshift optimize` to rebuild the artifact"
            ) from exc
        model_file = manifest.get("model_file") if isinstance(manifest, dict) else None
        if not isinstance(model_file, str):
            raise ConfigError(f"{manifest_path} has no 'model_file' — re-run `edgeshift optimize`")
        model_path = _inside_artifact(p, model_file)
        if not model_path.is_file():
            raise ModelError(f"artifact {p} names {model_file} but it is missing — rebuild it")
        check_runtime_options(manifest.get("runtime_options"), str(manifest_path))
        return model_path, manifest
    candidates = sorted(p.glob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0], None
    raise ModelError(
        f"{p} is a directory without {MANIFEST_NAME} and with {len(candidates)} .onnx files — "
        "pass the model file itself"
    )


def load_model(path: str | Path, *, check: bool = True, external_data: bool = True) -> LoadedModel:
    """Load PATH (a .onnx file or an artifact directory), with its external data unless
    ``external_data`` is False (the graph alone: cheap, for inspecting it).

    Raises ModelError for a missing, non-ONNX, truncated or structurally invalid file.
    """
    import onnx
    from google.protobuf.message import DecodeError

    model_path, manifest = resolve_model_path(path)
    try:
        proto = onnx.load(str(model_path), load_external_data=external_data)
    except DecodeError as exc:
        raise ModelError(
            f"{model_path} is not a valid ONNX protobuf ({exc}) — the file is truncated, "
            "corrupt or not an ONNX model; re-export or re-download it"
        ) from exc
    except (FileNotFoundError, OSError) as exc:
        raise ModelError(
            f"{model_path}: cannot read external data ({exc}) — keep the weight files "
            "beside the model"
        ) from exc
    except Exception as exc:  # onnx raises assorted errors for garbage input
        raise ModelError(f"{model_path} cannot be parsed as ONNX ({exc}) — re-export it") from exc
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise ModelError(
            f"{model_path} is not an ONNX model (no graph or IR version) — "
            "pass a .onnx file exported by torch.onnx, tf2onnx, paddle2onnx, …"
        )
    if check:
        try:
            # The path form of the checker copes with external data and >2 GB models.
            onnx.checker.check_model(str(model_path))
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
            raise ModelError(
                f"{model_path} is not a valid ONNX graph ({first}) — the file may be truncated; "
                "re-export it"
            ) from exc
    return LoadedModel(path=model_path, proto=proto, manifest=manifest)


# Ops that pass integer ids through unchanged on their way to a Gather's indices.
_ID_PASSTHROUGH = {"Cast", "Unsqueeze", "Reshape", "Squeeze", "Flatten", "Identity"}
_INT_TYPE_NAMES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


def gather_index_bounds(graph: onnx.GraphProto) -> dict[str, int]:
    """Integer graph inputs that index a Gather (directly or through Cast, Unsqueeze,
    Reshape, Squeeze, Flatten, Identity) -> N, the gathered dim: valid ids are [-N, N).

    Runtimes disagree on an id out of range (ONNX Runtime refuses it, OpenVINO answers with
    whatever memory it reads), so the server checks these bounds itself, for every backend.
    """
    import onnx

    int_types = {onnx.TensorProto.DataType.Value(name) for name in _INT_TYPE_NAMES}
    producers = {out: node for node in graph.node for out in node.output}
    int_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type in int_types} - {
        init.name for init in graph.initializer
    }
    dims_of: dict[str, list[int]] = {init.name: list(init.dims) for init in graph.initializer}
    for info in (*graph.value_info, *graph.input):
        shape = info.type.tensor_type.shape
        if info.name not in dims_of and all(d.HasField("dim_value") for d in shape.dim):
            dims_of[info.name] = [d.dim_value for d in shape.dim]
    bounds: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2:
            continue
        data_dims = dims_of.get(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if not data_dims or not -len(data_dims) <= axis < len(data_dims):
            continue
        source = node.input[1]
        for _ in range(16):  # a chain of passthrough ops; a cycle cannot hold us
            producer = producers.get(source)
            if producer is None or producer.op_type not in _ID_PASSTHROUGH or not producer.input:
                break
            source = producer.input[0]
        if source in int_inputs:
            n = data_dims[axis]
            bounds[source] = min(n, bounds.get(source, n))
    return bounds
