"""Architectures as runners: the registry, Cortex-M until compile lands, and missing tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeshift.errors import BackendError
from edgeshift.verify import runners as runners_module
from edgeshift.verify import verify
from edgeshift.verify.runners import NativeRunner, QemuUserRunner, register_runner, runner_for
from edgeshift.verify.userland import QEMU_INSTALL, require_userland


def test_unknown_arch_names_the_known_ones() -> None:
    with pytest.raises(
        BackendError, match=r"unknown --arch 'riscv64' — use one of .*arm64.*cortex-m4"
    ):
        runner_for("riscv64")


def test_aliases_resolve() -> None:
    assert runner_for("aarch64").arch == "arm64"
    assert runner_for("amd64").arch == "x86_64"


def test_cortex_m_refuses_a_float_model_in_one_line(mlp: tuple[Path, list], arm_toolchain) -> None:
    # The MCU runs int8 only; quantizing here would verify another model than the one given.
    report = verify(mlp[0], ["cortex-m4"])
    (result,) = report.results
    assert result.status == "error" and not report.passed
    assert result.message.startswith("cortex-m4: runs int8 models only")
    assert "edgeshift compile MODEL --target cortex-m4 --data" in result.message


def test_register_runner_plugs_in_an_arch(
    mlp: tuple[Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    class SecondNative(NativeRunner):
        emulated = True

    monkeypatch.setattr(runners_module, "_RUNNERS", dict(runners_module._RUNNERS))
    register_runner("cortex-m7", lambda: SecondNative())
    report = verify(mlp[0], ["cortex-m7"])
    assert report.results[0].status == "pass"
    assert report.results[0].outputs[0].agreement.identical


def test_missing_qemu_says_what_to_install(
    mlp: tuple[Path, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-aarch64 anywhere
    with pytest.raises(BackendError) as info:
        verify(mlp[0], ["arm64"], runners={"arm64": QemuUserRunner()})
    assert str(info.value) == (f"qemu-aarch64 not found — install QEMU user mode: `{QEMU_INSTALL}`")
    assert QEMU_INSTALL == "apt-get install qemu-user"


def test_missing_userland_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(
        BackendError, match=r"no arm64 userland at .* `edgeshift verify --build-userland`"
    ):
        require_userland(tmp_path / "nothing-here")
