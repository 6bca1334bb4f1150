"""The models a server holds: where they come from on disk, which versions are loaded under
the version policy, and loading/unloading them while the server runs.

A PATH is a model file (name: its stem, version 1), an optimize artifact directory (name: the
directory's, version 1, its runtime options applied by ``open_backend``), or a model repository
``repo/NAME/VERSION/`` where VERSION is an integer directory holding ``model.onnx``, one other
``.onnx`` file, or an artifact. Repository directories are scanned again on every index or
load request, so new models and versions appear without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeshift.errors import BackendError, ConfigError, EdgeshiftError, ModelError, ProtocolError
from edgeshift.model.load import MANIFEST_NAME, resolve_model_path
from edgeshift.runtime import Backend, open_backend
from edgeshift.runtime.graph_facts import graph_facts
from edgeshift.runtime.threads import usable_cpus
from edgeshift.serve.batcher import Batcher, batch_dim_supported
from edgeshift.serve.memory import server_runtime_options
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.protocol import InferRequest, check_request, tensor_metadata

log = logging.getLogger("edgeshift.serve")

_POLICY_RE = re.compile(r"^specific:(\d+(,\d+)*)$")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to load: the highest, all of them, or the listed ones."""

    kind: Literal["latest", "all", "specific"] = "latest"
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        text = text.strip().lower()
        if text in ("latest", "all"):
            return cls(kind=text)  # type: ignore[arg-type]
        match = _POLICY_RE.match(text.replace(" ", ""))
        if match:
            return cls("specific", tuple(sorted({int(v) for v in match.group(1).split(",")})))
        raise ConfigError(
            f"bad --version-policy {text!r} — use latest, all, or specific:1,3 (version numbers)"
        )

    def select(self, available: Sequence[int]) -> list[int]:
        if not available:
            return []
        if self.kind == "latest":
            return [max(available)]
        if self.kind == "all":
            return sorted(available)
        return [v for v in self.versions if v in available]


@dataclass(frozen=True)
class ServeOptions:
    """How every model is served; the CLI flags of ``edgeshift serve``."""

    max_batch: int = 32  # rows per backend call; 1 turns batching off
    max_delay_ms: float | None = None  # None: adaptive refill; 0: never wait; > 0: fixed wait
    max_queue: int = 512  # queued requests per model before 503
    threads: int | None = None  # runtime threads per model; None: usable CPUs
    instances: int = 1  # backend calls per model version at once; each gets threads/instances
    backend: str | None = None  # None: the artifact's, else onnxruntime
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    strict: bool = False  # a model that fails to load stops the server (else: not ready, reason)
    memory_budget_bytes: int | None = None  # what the runtimes may keep between requests

    def __post_init__(self) -> None:
        checks = [
            (self.max_batch >= 1, f"--max-batch must be >= 1, not {self.max_batch}"),
            (
                self.max_delay_ms is None or self.max_delay_ms >= 0,
                f"--max-delay-ms must be >= 0, not {self.max_delay_ms}",
            ),
            (self.max_queue >= 1, f"--max-queue must be >= 1, not {self.max_queue}"),
            (
                self.threads is None or self.threads >= 1,
                f"--threads must be >= 1, not {self.threads}",
            ),
            (self.instances >= 1, f"--instances must be >= 1, not {self.instances}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class ModelSource:
    name: str
    versions: dict[int, Path]
    repository: Path | None = None  # repo root to rescan; None for a file or artifact PATH


def _version_path(version_dir: Path) -> Path:
    preferred = version_dir / "model.onnx"
    if preferred.is_file() and not (version_dir / MANIFEST_NAME).is_file():
        return preferred
    return version_dir


def _scan_model_dir(model_dir: Path) -> dict[int, Path]:
    return {
        int(v.name): _version_path(v)
        for v in sorted(model_dir.iterdir())
        if v.is_dir() and v.name.isdigit()
    }


def _is_repository(path: Path) -> bool:
    return any(d.is_dir() and _scan_model_dir(d) for d in path.iterdir())


def discover(paths: Sequence[str | Path]) -> dict[str, ModelSource]:
    """Model name -> where its versions are, for the PATH arguments of ``edgeshift serve``."""
    sources: dict[str, ModelSource] = {}

    def add(source: ModelSource, origin: Path) -> None:
        if source.name in sources:
            raise ConfigError(
                f"two models are named {source.name!r} ({origin}) — rename one file or directory"
            )
        sources[source.name] = source

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ModelError(
                f"model not found: {path} — pass a .onnx file, an artifact or a repository"
            )
        if path.is_file():
            add(ModelSource(path.stem, {1: path}), path)
        elif (path / MANIFEST_NAME).is_file():
            add(ModelSource(path.resolve().name, {1: path}), path)
        elif _is_repository(path):
            for model_dir in sorted(path.iterdir()):
                if model_dir.is_dir() and (versions := _scan_model_dir(model_dir)):
                    add(ModelSource(model_dir.name, versions, repository=path), model_dir)
        elif list(path.glob("*.onnx")):
            add(ModelSource(path.resolve().name, {1: path}), path)
        else:
            raise ModelError(
                f"{path} holds no model: expected a .onnx file, an artifact (manifest.json) or "
                "a repository laid out as NAME/VERSION/model.onnx"
            )
    return sources


# Told of every request a model ran once its outputs are ready: (feeds, outputs or None when
# the run failed, seconds from enqueue to answer). Called on the event loop: it must be quick
# (the fleet agent samples requests for shadow comparison and keeps latency statistics).
RequestObserver = Callable[[dict[str, np.ndarray], dict[str, np.ndarray] | None, float], None]


class ServedModel:
    """One loaded version: its backend, its batcher and its OIP metadata."""

    def __init__(
        self,
        name: str,
        version: int,
        backends: Sequence[Backend],
        batcher: Batcher,
        index_bounds: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.version = str(version)
        self.backends = list(backends)  # one, or one per instance (see Backend.concurrent_runs)
        self.backend = self.backends[0]
        self.batcher = batcher
        self.inputs = list(self.backend.inputs)
        self.outputs = list(self.backend.outputs)
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = [i.name for i in self.inputs if i.dtype == "object"]
        # input -> N for ids that index a Gather (token ids): valid ids are [-N, N)
        self.index_bounds = dict(index_bounds or {})
        self.observer: RequestObserver | None = None  # None costs one attribute check

    @property
    def platform(self) -> str:
        return f"{self.backend.name}_onnx"

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": versions,
            "platform": self.platform,
            "inputs": [tensor_metadata(spec) for spec in self.inputs],
            "outputs": [tensor_metadata(spec) for spec in self.outputs],
        }

    def enqueue(self, request: InferRequest) -> asyncio.Future[dict[str, np.ndarray]]:
        """Check REQUEST against the model and queue it; the future holds every output."""
        check_request(request, self.inputs, self.outputs)
        feeds = dict(request.inputs)
        for name, n in self.index_bounds.items():
            ids = feeds.get(name)
            # Checked here, for every backend alike: ONNX Runtime refuses an id out of range
            # but OpenVINO answers with whatever memory it reads.
            if ids is not None and ids.size and (ids.min() < -n or ids.max() >= n):
                raise ProtocolError(
                    f"input {name!r} holds ids outside [{-n}, {n}): it indexes a table of "
                    f"{n} entries (an out-of-vocabulary token id?)",
                    400,
                )
        for name in self._string_inputs:
            # BYTES arrive as bytes; onnxruntime wants str for string tensors.
            try:
                feeds[name] = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(
                    feeds[name]
                )
            except UnicodeDecodeError:
                raise ProtocolError(f"input {name!r}: string tensors must be UTF-8", 400) from None
        future = self.batcher.enqueue(feeds)
        observer = self.observer
        if observer is not None:
            started_s = time.perf_counter()

            def notify(done: asyncio.Future[dict[str, np.ndarray]]) -> None:
                failed = done.cancelled() or done.exception() is not None
                observer(feeds, None if failed else done.result(), time.perf_counter() - started_s)

            future.add_done_callback(notify)
        return future

    def select(self, request: InferRequest, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs REQUEST asked for, in its order."""
        names = self._output_names if request.outputs is None else [o.name for o in request.outputs]
        return {name: result[name] for name in names}


BackendOpener = Callable[..., Backend]


def _server_runtime_options(path: Path, options: ServeOptions) -> dict[str, Any] | None:
    try:
        _, manifest = resolve_model_path(path)
    except EdgeshiftError:
        return None  # open_backend reports it
    name = options.backend or (manifest or {}).get("backend") or "onnxruntime"
    return server_runtime_options(name, options.memory_budget_bytes)


class ModelRepository:
    """Loaded models by name and version, and the repository API's operations."""

    def __init__(
        self,
        sources: dict[str, ModelSource],
        options: ServeOptions,
        metrics: ServerMetrics,
        opener: BackendOpener | None = None,  # default: edgeshift.runtime.open_backend
    ) -> None:
        self.sources = sources
        self.options = options
        self.metrics = metrics
        self._opener = opener
        self._loaded: dict[str, dict[str, ServedModel]] = {}
        self._reasons: dict[str, str] = {}  # why a model is not loaded
        self._lock = asyncio.Lock()
        # name -> observer given to every version of that model as it loads (see ServedModel)
        self.observers: dict[str, RequestObserver] = {}

    # --- queries (called on every request: cheap, no I/O) ---

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._loaded.get(name)
        if not versions:
            if name in self.sources:
                reason = self._reasons.get(name)
                raise ProtocolError(
                    f"model {name!r} is not ready ({reason}) — fix it and load it again"
                    if reason and reason != "unloaded"
                    else f"model {name!r} is not loaded — POST /v2/repository/models/{name}/load",
                    503,
                )
            # Not the list of loaded models: a client asks for the ones it may know of.
            raise ProtocolError(
                f"unknown model {name[:100]!r} — GET /v2/models/NAME for a model you know of", 404
            )
        if version is None or version == "":
            return versions[max(versions, key=int)]
        served = versions.get(version)
        if served is None:
            raise ProtocolError(
                f"model {name!r} has no loaded version {version!r} — loaded: "
                f"{', '.join(sorted(versions, key=int))}",
                404,
            )
        return served

    def versions(self, name: str) -> list[str]:
        return sorted(self._loaded.get(name, {}), key=int)

    def models(self) -> list[ServedModel]:
        return [m for versions in self._loaded.values() for m in versions.values()]

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        self._rescan()
        rows: list[dict[str, Any]] = []
        for name in sorted(self.sources):
            loaded = self._loaded.get(name, {})
            for version in sorted(self.sources[name].versions):
                state = "READY" if str(version) in loaded else "UNAVAILABLE"
                if ready_only and state != "READY":
                    continue
                row = {"name": name, "version": str(version), "state": state}
                if state != "READY":
                    row["reason"] = self._reasons.get(name, "not selected by the version policy")
                rows.append(row)
        return rows

    # --- changes ---

    def _rescan(self) -> None:
        roots = {s.repository for s in self.sources.values() if s.repository is not None}
        for root in roots:
            found: dict[str, dict[int, Path]] = {}
            for model_dir in sorted(root.iterdir()) if root.is_dir() else []:
                if model_dir.is_dir() and (versions := _scan_model_dir(model_dir)):
                    found[model_dir.name] = versions
            for name, versions in found.items():
                existing = self.sources.get(name)
                if existing is None or existing.repository == root:  # a PATH of that name wins
                    self.sources[name] = ModelSource(name, versions, root)
            for name in [n for n, s in self.sources.items() if s.repository == root]:
                if name not in found and name not in self._loaded:
                    del self.sources[name]  # removed from disk and not serving

    async def load_all(self) -> None:
        """Load every model; one that fails is UNAVAILABLE with its reason in the index while
        the rest serve, unless ``options.strict``: then the first failure is a ModelError."""
        for name in sorted(self.sources):
            try:
                await self.load(name)
            except ProtocolError as exc:
                if self.options.strict:
                    raise ModelError(f"{exc} (--strict stops the server on any model)") from None
                log.warning("%s; serving the other models", exc)

    @staticmethod
    def _redact(message: str, source: ModelSource) -> str:
        """MESSAGE without the server's directories: clients learn model names, not paths."""
        roots = {source.repository} if source.repository is not None else set()
        roots |= {p.parent for p in source.versions.values()}
        texts = {str(r) for r in roots} | {str(r.resolve()) for r in roots}
        for text in sorted(texts, key=len, reverse=True):
            if text not in ("", ".", "/"):
                message = message.replace(text + "/", "")
                if Path(text).is_absolute():  # a relative one may be a common word
                    message = message.replace(text, source.name)
        return message

    async def load(self, name: str) -> None:
        """(Re)load NAME's versions chosen by the policy; old versions drain, then close."""
        async with self._lock:
            self._rescan()
            source = self.sources.get(name)
            if source is None:
                raise ProtocolError(f"no model {name!r} in the repository", 404)
            chosen = self.options.version_policy.select(sorted(source.versions))
            if not chosen:
                self._reasons[name] = "no version matches the version policy"
                raise ProtocolError(
                    f"model {name!r}: no version matches the version policy "
                    f"(available: {', '.join(map(str, sorted(source.versions)))})",
                    400,
                )
            fresh: dict[str, ServedModel] = {}
            try:
                for version in chosen:
                    fresh[str(version)] = await self._open(name, version, source.versions[version])
            except EdgeshiftError as exc:
                for served in fresh.values():
                    await self._close(served)
                reason = self._redact(str(exc), source)
                self._reasons[name] = reason
                raise ProtocolError(f"cannot load model {name!r}: {reason}", 400) from exc
            for served in fresh.values():
                served.observer = self.observers.get(name)
            old = self._loaded.get(name, {})
            self._loaded[name] = fresh
            self._reasons.pop(name, None)
            self.metrics.queue_depth.labels(name).set_function(
                lambda: sum(m.batcher.depth for m in self._loaded.get(name, {}).values())
            )
            for served in old.values():
                await self._close(served)

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self._loaded:
                if name in self.sources:
                    return  # already unloaded: unloading is idempotent, as in Triton
                raise ProtocolError(f"unknown model {name!r}", 404)
            old = self._loaded.pop(name)
            self._reasons[name] = "unloaded"
            for served in old.values():
                await self._close(served)

    async def close(self) -> None:
        """Finish every queued request, then release every model."""
        async with self._lock:
            loaded, self._loaded = self._loaded, {}
            for versions in loaded.values():
                for served in versions.values():
                    await self._close(served)

    async def _open(self, name: str, version: int, path: Path) -> ServedModel:
        opts = self.options
        threads = max(1, (opts.threads or usable_cpus()) // opts.instances)

        def open_one() -> Backend:
            return (self._opener or open_backend)(
                path,
                backend=opts.backend,
                threads=threads,
                options=_server_runtime_options(path, opts),
            )

        try:
            backends = [await asyncio.to_thread(open_one)]
        except BackendError:
            # A corrupt or truncated file: the graph reader's advice fits it better.
            await asyncio.to_thread(graph_facts, path)
            raise
        try:
            # Which inputs are ids to check (read once per file, with the backend's memory
            # plan: in a child process where this one has not loaded onnx, see graph_facts).
            index_bounds = (await asyncio.to_thread(graph_facts, path)).index_bounds
            # A backend that runs calls concurrently serves every instance (one copy of the
            # weights); any other is opened once per instance.
            while not backends[0].concurrent_runs and len(backends) < opts.instances:
                backends.append(await asyncio.to_thread(open_one))
        except BaseException:
            for backend in backends:
                backend.close()
            raise
        runs = [backends[i % len(backends)].run for i in range(opts.instances)]
        batcher = Batcher(
            f"{name}:{version}",
            runs,
            batchable=batch_dim_supported(backends[0].inputs, backends[0].outputs),
            max_batch=opts.max_batch,
            max_delay_ms=opts.max_delay_ms,
            max_queue=opts.max_queue,
            on_batch=lambda rows: self.metrics.observe_batch(name, rows),
        )
        return ServedModel(name, version, backends, batcher, index_bounds)

    @staticmethod
    async def _close(served: ServedModel) -> None:
        await served.batcher.close()
        for backend in served.backends:
            backend.close()
