"""Fakes and artifacts for the agent's tests: a tiny classifier artifact (model.onnx +
manifest.json, as `optimize` writes), an installer over the real bundle code with an in-memory
"signed" manifest, and an in-memory control plane transport with a switch for the link."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeshift.errors import ArtifactVerificationError, FleetError
from edgeshift.fleet import bundle
from edgeshift.fleet.agent.host import ServingWindow
from edgeshift.fleet.agent.shadow import ShadowComparator
from edgeshift.fleet.schema import ArtifactRef, DesiredState, DeviceReport, TelemetryBatch
from tests.serve.serve_models import save_graph


def classifier_weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)


def make_artifact(directory: Path, seed: int = 0, name: str = "clf") -> Path:
    """x [n, 4] float32 -> scores [n, 3] = x @ W(seed): an optimize-like artifact dir."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(classifier_weights(seed), "w")],
    )
    save_graph(graph, directory / "model.onnx")
    (directory / "manifest.json").write_text(
        json.dumps({"model_file": "model.onnx", "backend": "onnxruntime", "seed": seed})
    )
    return directory


def pack_artifact(
    src: Path, out: Path, name: str, version: int
) -> tuple[ArtifactRef, dict[str, str]]:
    files = bundle.pack(src, out)
    data = out.read_bytes()
    ref = ArtifactRef(
        artifact_id=f"{name}-v{version}",
        name=name,
        version=version,
        target_path=f"{name}/{version}.tar",
        length=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return ref, files


class LocalInstaller:
    """The Installer protocol over fleet/bundle.py, trusting SIGNED (sha256 -> file hashes)."""

    def __init__(self) -> None:
        self.signed: dict[str, dict[str, str]] = {}
        self.expired = False

    def verify_bundle(self, ref: ArtifactRef, bundle_path: Path) -> None:
        if self.expired:
            raise ArtifactVerificationError("TUF metadata: expired; keeping last-good")
        data = bundle_path.read_bytes()
        if len(data) != ref.length or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ArtifactVerificationError(f"bundle {ref.target_path}: sha256 mismatch; refused")
        if ref.sha256 not in self.signed:
            raise ArtifactVerificationError(f"{ref.target_path} is not signed; refused")

    def unpack(self, ref: ArtifactRef, bundle_path: Path, dest: Path) -> None:
        bundle.unpack(bundle_path, dest, self.signed[ref.sha256], max_bytes=1 << 30)

    def verify_directory(self, directory: Path, ref: ArtifactRef) -> None:
        if ref.sha256 not in self.signed:
            raise ArtifactVerificationError(f"{ref.artifact_id} is not signed")
        bundle.verify_directory(directory, self.signed[ref.sha256])


class FakeTransport:
    """An in-memory control plane: bundles by consistent path, reports and telemetry kept."""

    def __init__(self) -> None:
        self.bundles: dict[str, bytes] = {}
        self.desired_state: DesiredState | None = None
        self.online = True
        self.reports: list[DeviceReport] = []
        self.telemetry_batches: list[TelemetryBatch] = []  # carried by reports or POSTed
        self.telemetry_posts = 0
        self.downloads: list[tuple[str, int]] = []  # (path, resumed from byte)
        self.cut_after_bytes: int | None = None  # the link drops after this many bytes
        self._changed = asyncio.Event()

    def publish(self, ref: ArtifactRef, data: bytes) -> None:
        directory, _, base = ref.target_path.rpartition("/")
        self.bundles[f"{directory}/{ref.sha256}.{base}"] = data

    def want(self, desired: DesiredState) -> None:
        self.desired_state = desired
        self._changed.set()

    def _link(self) -> None:
        if not self.online:
            raise FleetError("control plane unreachable (ConnectError)", 503)

    async def desired(self, generation: int, wait_s: float) -> DesiredState | None:
        self._link()
        d = self.desired_state
        if d is None or d.generation <= generation:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(wait_s, 0.2))
            except TimeoutError:
                return None
            self._link()
        return self.desired_state

    async def report(self, report: object) -> None:
        self._link()
        assert isinstance(report, DeviceReport)
        self.reports.append(report)
        if report.telemetry:  # the spool, carried by the report
            self.telemetry_batches.append(TelemetryBatch(records=report.telemetry))

    async def telemetry(self, batch: object) -> int:
        self._link()
        assert isinstance(batch, TelemetryBatch)
        self.telemetry_posts += 1
        self.telemetry_batches.append(batch)
        return len(batch.records)

    async def download(self, target_path: str, part_file: Path, expected_length: int) -> Path:
        self._link()
        data = self.bundles[target_path]
        have = part_file.stat().st_size if part_file.exists() else 0
        self.downloads.append((target_path, have))
        end = len(data)
        if self.cut_after_bytes is not None:
            end = min(end, have + self.cut_after_bytes)
        with part_file.open("ab") as f:
            f.write(data[have:end])
        if end < len(data):
            raise FleetError("download broke off; it resumes later", 503)
        return part_file

    def phases(self) -> list[str]:
        return [r.phase.value for r in self.reports]


class FakeHost:
    """A ModelHost that records activations; its shadow agrees as told."""

    def __init__(self) -> None:
        self.activations: list[tuple[Path, str]] = []
        self.shadow_agreement = 1.0
        self.fail_trial = False  # every request on the candidate fails
        self._report = ServingWindow()
        self._watchers: list[ServingWindow] = []
        self.shadow: ShadowComparator | None = None

    async def activate(self, slot_dir: Path, name: str) -> None:
        self.activations.append((slot_dir, name))

    @property
    def active_slot(self) -> str | None:
        return self.activations[-1][0].name if self.activations else None

    async def start_shadow(self, slot_dir: Path) -> ShadowComparator:
        loop = asyncio.get_running_loop()
        agree = self.shadow_agreement

        def run(feeds: dict[str, np.ndarray]) -> asyncio.Future[dict[str, np.ndarray]]:
            future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
            ok = np.random.default_rng().random() < agree
            future.set_result({"y": feeds["x"] if ok else -feeds["x"]})
            return future

        self.shadow = ShadowComparator(run)
        return self.shadow

    async def stop_shadow(self) -> None:
        self.shadow = None

    def traffic(self, requests: int) -> None:
        """REQUESTS local requests answered (failed when fail_trial and the candidate serves)."""
        failing = self.fail_trial and len(self.activations) >= 2
        x = np.array([[1.0, 2.0]], np.float32)
        for _ in range(requests):
            for w in [self._report, *self._watchers]:
                w.observe(not failing, 0.001)
            if self.shadow is not None and not failing:
                self.shadow.observe({"x": x}, {"y": x})

    def stats(self) -> ServingWindow:
        return self._report

    def watch(self) -> ServingWindow:
        w = ServingWindow()
        self._watchers.append(w)
        return w

    def unwatch(self, window: ServingWindow) -> None:
        if window in self._watchers:
            self._watchers.remove(window)

    async def close(self) -> None:
        pass
