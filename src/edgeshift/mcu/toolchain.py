"""The Cortex-M cross toolchain: which flags and board each core gets, building a firmware
ELF with Debian's ``gcc-arm-none-eabi`` + newlib, and reading its section and symbol sizes.

Pure parts (:data:`CORES`, :func:`compile_command`, :func:`parse_size_sections`,
:func:`parse_nm_symbols`) take data and return data; :func:`check_toolchain`,
:func:`build_firmware`, :func:`section_sizes` and :func:`symbol_size` run the tools.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeshift.errors import BackendError

Progress = Callable[[str], None]

FIRMWARE_DIR = Path(__file__).parent / "firmware"
APT_INSTALL = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
CROSS_TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm")
QEMU_SYSTEM = "qemu-system-arm"
HOST_CC = "gcc"  # builds the QEMU instruction-counting plugin


@dataclass(frozen=True)
class CoreSpec:
    """How to build for one Cortex-M core and which QEMU board runs it."""

    id: str
    cflags: tuple[str, ...]
    fpu: str  # what -mfpu (or the core's default) gives: "fpv4-sp-d16", "fpv5-d16", ...
    fpu_double: bool
    has_dsp: bool  # Armv7E-M / Armv8-M DSP extension (SMLAD, SXTB16)
    has_mve: bool  # Helium (M-profile Vector Extension)
    qemu_machine: str
    qemu_cpu_note: str  # what QEMU's model of the core provides, checked on QEMU 7.2
    linker_script: str  # file name in firmware/

    @property
    def board(self) -> str:
        return f"{self.qemu_machine} ({self.id})"


CORES: dict[str, CoreSpec] = {
    "cortex-m4": CoreSpec(
        id="cortex-m4",
        cflags=("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
        fpu="fpv4-sp-d16",
        fpu_double=False,
        has_dsp=True,
        has_mve=False,
        qemu_machine="mps2-an386",
        qemu_cpu_note="Cortex-M4F with single-precision FPv4 and the DSP extension",
        linker_script="mps2-an386.ld",
    ),
    "cortex-m7": CoreSpec(
        id="cortex-m7",
        # QEMU's cortex-m7 reports MVFR0 with double precision, so FPv5-D16 (not -SP) runs.
        cflags=("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
        fpu="fpv5-d16",
        fpu_double=True,
        has_dsp=True,
        has_mve=False,
        qemu_machine="mps2-an500",
        qemu_cpu_note="Cortex-M7 with double-precision FPv5 and the DSP extension",
        linker_script="mps2-an500.ld",
    ),
    "cortex-m55": CoreSpec(
        id="cortex-m55",
        # The core's default extensions: MVE integer + float (Helium), FP16/32/64, DSP.
        cflags=("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
        fpu="fp-armv8-fullfp16-d16",
        fpu_double=True,
        has_dsp=True,
        has_mve=True,
        qemu_machine="mps3-an547",
        qemu_cpu_note="Cortex-M55 with Helium (MVE-F), FPv5 with half precision, DSP",
        linker_script="mps3-an547.ld",
    ),
}

# Sections kept in the ELF but never loaded on the device (debug info, attributes).
_NON_ALLOC_PREFIXES = (".debug", ".comment", ".ARM.attributes", ".stab", ".note.gnu")
# How each loaded output section of firmware/es_sections.ld counts: code, read-only data in
# flash (tables of pointers and unwind data included), initialised data (flash and RAM), bss.
SECTION_KINDS: dict[str, str] = {
    ".text": "text",
    ".isr_vector": "rodata",
    ".rodata": "rodata",
    ".ARM.extab": "rodata",
    ".ARM.exidx": "rodata",
    ".preinit_array": "rodata",
    ".init_array": "rodata",
    ".fini_array": "rodata",
    ".data": "data",
    ".bss": "bss",
}


def core_spec(core: str) -> CoreSpec:
    """The :class:`CoreSpec` for a core id; an unknown id is a one-line BackendError."""
    try:
        return CORES[core]
    except KeyError:
        raise BackendError(
            f"unknown Cortex-M core {core!r} — use one of {', '.join(CORES)}"
        ) from None


def check_toolchain(need_qemu: bool) -> None:
    """Raise a one-line BackendError naming the apt-get command if a needed tool is missing.

    The cross compiler, newlib (its ``rdimon.specs``) and binutils are always needed; with
    ``need_qemu`` also ``qemu-system-arm`` and the host's ``gcc`` (for the counting plugin).
    """
    missing = [tool for tool in CROSS_TOOLS if shutil.which(tool) is None]
    if not missing and not _has_newlib():
        missing.append("newlib (rdimon.specs)")
    if need_qemu:
        missing += [tool for tool in (QEMU_SYSTEM,) if shutil.which(tool) is None]
    host_cc_missing = need_qemu and shutil.which(HOST_CC) is None
    if host_cc_missing:
        missing.append(f"host {HOST_CC}")
    if missing:
        install = APT_INSTALL + (" gcc" if host_cc_missing else "")
        raise BackendError(
            f"the Cortex-M toolchain is incomplete ({', '.join(missing)} not found) — "
            f"install it with: sudo {install}"
        )


def _has_newlib() -> bool:
    # gcc prints the bare name back when the file is not in its search path.
    done = subprocess.run(
        ["arm-none-eabi-gcc", "-print-file-name=rdimon.specs"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and Path(done.stdout.strip()).is_absolute()


def support_sources(core: str) -> list[Path]:
    """The firmware sources every build links besides the model's and the harness: the
    startup code (vector table, reset, fault reporting). The board's linker script is
    chosen by :func:`build_firmware` from ``core``."""
    core_spec(core)
    return [FIRMWARE_DIR / "startup.c"]


def _file_bytes(path: Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None  # a missing source is gcc's error to report, with its name


def compile_command(
    sources: list[Path],
    include_dirs: list[Path],
    spec: CoreSpec,
    elf: Path,
    *,
    opt: str = "-O2",
    defines: dict[str, str] | None = None,
    harness: bool = True,
) -> list[str]:
    """The one arm-none-eabi-gcc command that compiles and links a firmware ELF.

    The startup code (and with ``harness`` the harness) is added unless ``sources`` already
    holds a byte-identical copy (an emitted ``main.c`` is the harness copied).
    """
    given = {_file_bytes(s) for s in sources}
    support = support_sources(spec.id) + ([FIRMWARE_DIR / "harness.c"] if harness else [])
    firmware = [f for f in support if _file_bytes(f) not in given]
    argv = ["arm-none-eabi-gcc", *spec.cflags, opt, "-g", "-Wall"]
    # Per-function sections let --gc-sections drop what the model never calls.
    argv += ["-ffunction-sections", "-fdata-sections"]
    argv += [f"-D{k}={v}" if v != "" else f"-D{k}" for k, v in (defines or {}).items()]
    argv += [f"-I{d}" for d in include_dirs]
    argv += [str(s) for s in [*sources, *firmware]]
    argv += ["-nostartfiles", "--specs=rdimon.specs", f"-L{FIRMWARE_DIR}"]
    argv += ["-T", spec.linker_script, "-Wl,--gc-sections", f"-Wl,-Map,{elf.with_suffix('.map')}"]
    argv += ["-o", str(elf)]
    return argv


def build_firmware(
    sources: list[Path],
    include_dirs: list[Path],
    core: str,
    out_dir: Path,
    *,
    opt: str = "-O2",
    defines: dict[str, str] | None = None,
    harness: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Compile ``sources`` with the startup code (and the semihosting harness) into
    ``out_dir/firmware.elf`` for ``core``; return the ELF's path.

    ``include_dirs`` must hold the model's ``model.h``. Passing the startup code or a copy of
    the harness in ``sources`` too is fine: each is linked once. The full compiler output goes to
    ``out_dir/build.log``; a failure raises a one-line BackendError with the first compiler
    error and that path.
    """
    spec = core_spec(core)
    check_toolchain(need_qemu=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    elf = out_dir / "firmware.elf"
    log = out_dir / "build.log"
    argv = compile_command(
        [Path(s) for s in sources],
        [Path(d) for d in include_dirs],
        spec,
        elf,
        opt=opt,
        defines=defines,
        harness=harness,
    )
    if progress:
        progress(f"building firmware for {spec.board} with arm-none-eabi-gcc {opt}")
    elf.unlink(missing_ok=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    log.write_text(" ".join(argv) + "\n\n" + done.stdout + done.stderr)
    if done.returncode != 0 or not elf.exists():
        overflow = memory_overflow(done.stdout + done.stderr)
        if overflow:
            raise BackendError(
                f"the firmware does not fit {spec.board}: {overflow} (memory map: "
                f"{FIRMWARE_DIR / spec.linker_script}) — shrink the model or its arena "
                f"(full log: {log})"
            )
        first = first_compiler_error(done.stdout + done.stderr)
        raise BackendError(
            f"arm-none-eabi-gcc failed building for {spec.id}: {first} (full log: {log})"
        )
    return elf


def memory_overflow(text: str) -> str | None:
    """What the linker said when the firmware does not fit the board's FLASH or RAM."""
    regions = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", text)
    if regions:
        return "; ".join(f"{name} overflowed by {int(n):,} B" for name, n in regions)
    if "do not fit in the board's RAM" in text:  # es_sections.ld's ASSERT
        return "RAM has no room left for the heap and stack after .data and .bss"
    return None


def first_compiler_error(text: str) -> str:
    """The first line of compiler or linker output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    markers = ("error:", "undefined reference", "fatal", "cannot find", "will not fit")
    found = [ln for ln in lines if any(m in ln for m in markers)]
    # collect2's summary only says that ld failed; the line before it says why.
    useful = [ln for ln in found if not ln.startswith("collect2:")]
    if useful or found:
        return (useful or found)[0]
    return lines[0] if lines else "no compiler output"


def parse_size_sections(text: str) -> dict[str, int]:
    """``arm-none-eabi-size -A`` output → bytes of text, rodata, data and bss.

    A loaded section the linker script does not name (an orphan) is an error rather than a
    guess, so the four numbers always add up to what is on the device.
    """
    sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[0].startswith(".") or not parts[1].isdigit():
            continue
        name, size = parts[0], int(parts[1])
        if name in SECTION_KINDS:
            sizes[SECTION_KINDS[name]] += size
        elif not name.startswith(_NON_ALLOC_PREFIXES):
            raise BackendError(
                f"the firmware has a section {name} ({size} B) that edgeshift's linker script "
                "does not place — put it in .text/.rodata/.data/.bss (firmware/es_sections.ld)"
            )
    return sizes


def parse_nm_symbols(text: str) -> dict[str, tuple[int, int]]:
    """``arm-none-eabi-nm -S`` output → {name: (address, size_bytes)}; sizeless symbols get 0."""
    symbols: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            symbols[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
        elif len(parts) == 3 and len(parts[1]) == 1:
            symbols.setdefault(parts[2], (int(parts[0], 16), 0))
    return symbols


def _tool_output(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        check_toolchain(need_qemu=False)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise BackendError(f"{argv[0]} failed on {argv[-1]}: {detail}")
    return done.stdout


def section_sizes(elf: Path) -> dict[str, int]:
    """Bytes of ``text``, ``rodata``, ``data`` and ``bss`` in a firmware ELF.

    Flash holds text + rodata + data (the initialisers); RAM holds data + bss (the model's
    arena is in bss) plus the heap and stack the linker script reserves.
    """
    return parse_size_sections(_tool_output(["arm-none-eabi-size", "-A", str(elf)]))


def symbol_table(elf: Path) -> dict[str, tuple[int, int]]:
    """{symbol: (address, size_bytes)} of a firmware ELF, from ``arm-none-eabi-nm -S``."""
    return parse_nm_symbols(_tool_output(["arm-none-eabi-nm", "-S", str(elf)]))


def symbol_size(elf: Path, name: str) -> int:
    """Size in bytes of symbol ``name`` in a firmware ELF; a missing symbol is an error."""
    symbols = symbol_table(elf)
    if name not in symbols:
        raise BackendError(
            f"symbol {name!r} is not in {elf} — check the name, or that the linker kept it "
            "(--gc-sections drops what nothing uses)"
        )
    return symbols[name][1]


__all__ = [
    "APT_INSTALL",
    "CORES",
    "CoreSpec",
    "build_firmware",
    "check_toolchain",
    "compile_command",
    "core_spec",
    "first_compiler_error",
    "memory_overflow",
    "parse_nm_symbols",
    "parse_size_sections",
    "section_sizes",
    "support_sources",
    "symbol_size",
    "symbol_table",
]
