"""The Arm64 userland: Debian's arm64 Python plus arm64 wheels, run under qemu-aarch64.

Built once by :func:`build_userland` (the only edgeshift step that downloads: Debian arm64
packages through apt and manylinux aarch64 wheels through pip) and cached under the user's
cache directory; every later ``verify`` only reads it. No root tricks: packages are unpacked
with ``dpkg-deb -x`` into a folder that ``qemu-aarch64 -L`` treats as the guest's ``/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeshift.errors import BackendError
from edgeshift.targets.host import cache_dir

PYTHON_VERSION = "3.11"
# The guest's Python and what its wheels link against; apt resolves the rest.
DEBIAN_ROOTS = (
    f"python{PYTHON_VERSION}-minimal",
    f"libpython{PYTHON_VERSION}-stdlib",
    "libstdc++6",
)
# Pinned to the versions this edgeshift is tested with on x86, so a difference between the
# two sides is the ISA's, not a version's. The serve stack is here so `edgeshift serve`,
# `inspect`, `bench` and `estimate` run inside the userland too (scipy/nncf are not needed).
WHEELS = (
    "onnxruntime==1.32.0",
    "openvino==2026.4.1",
    "numpy==2.4.6",
    "onnx==1.23.2",
    "ml-dtypes==0.5.4",
    "pydantic==2.14.4",
    "pyyaml==6.0.4",
    "rich==15.0.0",
    "typer==0.29.2",
    "psutil",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "httptools",
    "uvloop",
    "orjson",
    "prometheus-client",
    # the gRPC front end (Triton's service protos ship in tritonclient)
    "grpcio==1.85.3",
    "protobuf==6.33.6",
    "tritonclient[grpc]==2.73.0",
)
# Debian 12's glibc is 2.36: any manylinux tag up to that runs (OpenVINO's arm64 wheel is 2_35).
WHEEL_PLATFORMS = (
    *(f"manylinux_2_{v}_aarch64" for v in (36, 35, 34, 31, 28, 17)),
    "manylinux2014_aarch64",
)
QEMU_INSTALL = "apt-get install qemu-user"
APT_ARM64 = "dpkg --add-architecture arm64 && apt-get update"
# onnxruntime reads /proc/cpuinfo at import to pick kernels; under QEMU 7.2 the host's x86
# one makes it segfault. This Neoverse-N1 description (implementer 0x41, part 0xd0c) is what
# `-L` shows the guest instead; its features match what `-cpu max` emulates and ORT uses.
ARM_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp ssbs\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\n"
    "CPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
    for i in range(2)
)
ARM_MIDR_EL1 = "0x00000000413fd0c1"  # the same Neoverse-N1 r3p1 as ARM_CPUINFO
_MARKER = "edgeshift-userland.json"


@dataclass(frozen=True)
class Userland:
    """A built arm64 userland: the rootfs qemu's ``-L`` points at and its Python."""

    root: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{PYTHON_VERSION}"


def userland_key() -> str:
    """Changes whenever what the userland contains would change."""
    text = json.dumps(
        [PYTHON_VERSION, DEBIAN_ROOTS, WHEELS, WHEEL_PLATFORMS, ARM_CPUINFO, ARM_MIDR_EL1, 2]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_userland_dir() -> Path:
    return cache_dir() / f"arm64-userland-{userland_key()}"


def find_userland(root: Path | None = None) -> Userland | None:
    """The cached userland when it is complete, else None."""
    root = root or default_userland_dir()
    if not (root / _MARKER).is_file():
        return None
    return Userland(root, root / "site")


def require_qemu(binary: str = "qemu-aarch64") -> str:
    """The path of qemu-user's BINARY; BackendError with the install line when missing."""
    path = shutil.which(binary)
    if path is None:
        raise BackendError(f"{binary} not found — install QEMU user mode: `{QEMU_INSTALL}`")
    return path


def require_userland(root: Path | None = None) -> Userland:
    found = find_userland(root)
    if found is None:
        raise BackendError(
            f"no arm64 userland at {root or default_userland_dir()} — build it once with "
            "`edgeshift verify --build-userland` (downloads Debian arm64 packages and "
            "aarch64 wheels)"
        )
    return found


def build_userland(root: Path | None = None, *, force: bool = False, log: bool = False) -> Userland:
    """Download and unpack the arm64 userland into ROOT (default: the user's cache dir).

    Needs ``apt-get`` with the arm64 architecture added and network access to the Debian
    mirror and to the Python package index; every failure names what to install or fix.
    """
    root = root or default_userland_dir()
    if not force and (found := find_userland(root)) is not None:
        return found
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise BackendError(
                f"{tool} not found — the arm64 userland is built from Debian packages"
            )
    staging = Path(tempfile.mkdtemp(prefix="userland-", dir=_ensure(root.parent)))
    try:
        _unpack_debs(staging, log)
        _install_wheels(staging, log)
        proc = staging / "proc"
        proc.mkdir(exist_ok=True)
        (proc / "cpuinfo").write_text(ARM_CPUINFO)
        # OpenVINO's Arm kernels read the CPU id here and warn on every import without it.
        ident = staging / "sys/devices/system/cpu/cpu0/regs/identification"
        ident.mkdir(parents=True, exist_ok=True)
        (ident / "midr_el1").write_text(f"{ARM_MIDR_EL1}\n")
        (staging / _MARKER).write_text(json.dumps({"key": userland_key(), "wheels": WHEELS}))
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return Userland(root, root / "site")


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(argv: list[str], what: str, fix: str, cwd: Path | None = None, log: bool = False) -> str:
    if log:
        print("+", " ".join(argv), flush=True)
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BackendError(f"{what} failed: {exc} — {fix}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise BackendError(f"{what} failed: {last[:300]} — {fix}")
    return done.stdout


def _arm64_packages(log: bool) -> list[str]:
    argv = ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests"]
    argv += ["--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"]
    argv += [f"{p}:arm64" for p in DEBIAN_ROOTS]
    out = _run(
        argv,
        "resolving the arm64 Debian packages",
        f"add the architecture first: `{APT_ARM64}`",
        log=log,
    )
    names = {line.strip() for line in out.splitlines() if line and not line[0].isspace()}
    # Only the arm64 libraries; dpkg/tar/perl are the package manager's own, not Python's.
    skip = ("dpkg:", "tar:", "install-info:", "perl")
    return sorted(n for n in names if n.endswith(":arm64") and not n.startswith(skip))


def _unpack_debs(root: Path, log: bool) -> None:
    packages = _arm64_packages(log)
    debs = _ensure(root.parent / f".debs-{userland_key()}")
    _run(
        ["apt-get", "download", *packages],
        "downloading the arm64 Debian packages",
        f"check the Debian mirror is reachable and run `{APT_ARM64}`",
        cwd=debs,
        log=log,
    )
    for deb in sorted(debs.glob("*_arm64.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}", "delete the cache")
    shutil.rmtree(debs, ignore_errors=True)


def _install_wheels(root: Path, log: bool) -> None:
    wheels = _ensure(root.parent / f".wheels-{userland_key()}")
    platform_args = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    pip = [os.environ.get("EDGESHIFT_PIP_PYTHON", _python()), "-m", "pip"]
    fix = (
        "check that the package index is reachable (`pip download "
        "--only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 onnxruntime`)"
    )
    guest = ["--only-binary=:all:", *platform_args, "--python-version", PYTHON_VERSION]
    guest += ["--implementation", "cp", "--abi", "cp311"]
    _run(
        [*pip, "download", "-q", *guest, "-d", str(wheels), *WHEELS],
        "downloading the aarch64 wheels",
        fix,
        log=log,
    )
    _run(
        [*pip, "install", "-q", "--no-deps", *guest, "--target", str(root / "site")]
        + [str(w) for w in sorted(wheels.glob("*.whl"))],
        "unpacking the aarch64 wheels",
        "delete the cache and build again",
        log=log,
    )
    shutil.rmtree(wheels, ignore_errors=True)


def _python() -> str:
    import sys

    return sys.executable
