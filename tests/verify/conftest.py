"""Fixtures for the arm64 tests: the cached userland, and every zoo model's variants."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgeshift import zoo
from edgeshift.errors import EdgeshiftError
from edgeshift.verify import build_userland, find_userland, verify_many
from edgeshift.verify.report import VerifyReport
from edgeshift.verify.userland import Userland
from edgeshift.verify.variants import build_variant_artifacts

ZOO = ("digits-mlp", "digits-cnn")
# fp32 on both runtimes, ORT int8 both ways, and the x86 favourites that may not exist on Arm.
RECIPES = ("ort-fp32-opt", "openvino-fp32", "ort-int8-static", "ort-int8-dynamic", "openvino-bf16")
# 200 samples: one top-1 flip is 0.5 points, the goal's resolution; the CNN costs ~25 ms per
# sample under emulation, so more would only slow CI.
SAMPLES = 200


@pytest.fixture(scope="session")
def userland() -> Userland:
    """The cached arm64 userland, built on first use (Debian arm64 debs + aarch64 wheels).

    Skips where qemu-user or Debian's arm64 architecture is missing on a developer's
    machine; fails under CI (CI=true), where .ci/run installs them, so the arm64 path can
    never pass CI by skipping."""
    found = find_userland()
    problem = None
    if shutil.which("qemu-aarch64") is None:
        problem = "needs qemu-user (apt-get install qemu-user)"
    elif found is None:
        try:
            found = build_userland()
        except EdgeshiftError as exc:
            problem = f"the arm64 userland could not be built: {exc}"
    if problem is not None or found is None:
        if os.environ.get("CI"):
            pytest.fail(problem or "no arm64 userland")
        pytest.skip(problem or "no arm64 userland")
    return found


@pytest.fixture(scope="session")
def zoo_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("zoo-variants")
    built: dict[tuple[str, str], Path] = {}
    for name in ZOO:
        model = zoo.get(name, out / name)
        for recipe, path in build_variant_artifacts(
            model.model_path, model.data_path, out / f"{name}-variants", RECIPES
        ).items():
            assert isinstance(path, Path), f"{name} {recipe} did not build here: {path}"
            built[(name, recipe)] = path
    return built


@pytest.fixture(scope="session")
def arm64_reports(
    userland: Userland,
    zoo_variants: dict[tuple[str, str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], VerifyReport]:
    """Every zoo model and variant verified on arm64 in one emulated process."""
    keys = sorted(zoo_variants)
    data_dir = tmp_path_factory.mktemp("zoo-data")
    data = [zoo.get(name, data_dir / name).data_path for name, _ in keys]
    reports = verify_many(
        [zoo_variants[k] for k in keys], ["arm64", "x86_64"], data, samples=SAMPLES
    )
    return dict(zip(keys, reports, strict=True))
