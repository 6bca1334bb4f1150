"""Run a Cortex-M firmware under ``qemu-system-arm`` and count its instructions exactly.

The firmware is built by :func:`edgeshift.mcu.toolchain.build_firmware` (re-exported here)
around ``firmware/harness.c``: it reads the samples from a host file over semihosting, calls
``model_infer`` on each between two marks, and writes the outputs back. A small TCG plugin
(``firmware/insn_count.c``, built once with the host's gcc into the cache directory) counts
every executed instruction with one inline add per translation block, and those between the
marks. QEMU does not model pipelines: the counts are instructions, not cycles.

Pure parts: :func:`qemu_command`, :func:`parse_plugin_report`, :func:`describe_fault`,
:func:`harness_samples`. I/O: :func:`plugin_path`, :func:`run_firmware`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeshift.errors import BackendError
from edgeshift.mcu.toolchain import (
    APT_INSTALL,
    CORES,
    FIRMWARE_DIR,
    HOST_CC,
    CoreSpec,
    Progress,
    build_firmware,
    check_toolchain,
    core_spec,
    section_sizes,
    support_sources,
    symbol_size,
    symbol_table,
)

INPUT_FILE = "es_input.bin"  # the harness's ES_INPUT_PATH default
OUTPUT_FILE = "es_output.bin"
REPORT_FILE = "es_insn_count.txt"
MARK_BEGIN = "es_mark_begin"
MARK_END = "es_mark_end"
# Between the marks, besides model_infer: its `bl` and the `bl es_mark_end` (harness.c).
MARK_OVERHEAD_INSNS = 2
FAULT_EXIT_CODE = 120  # startup.c's ES_FAULT_EXIT_CODE

# Configurable Fault Status Register bits (Armv7-M ARM B3.2.15) worth naming in an error.
_CFSR_BITS = {
    0: "instruction access violation",
    1: "data access violation",
    8: "instruction bus error",
    9: "precise data bus error",
    10: "imprecise data bus error",
    16: "undefined instruction",
    17: "invalid state (Thumb bit clear: a jump to an even or bad address)",
    18: "invalid PC on exception return",
    19: "coprocessor disabled",
    24: "unaligned access",
    25: "divide by zero",
}


@dataclass
class FirmwareRun:
    """What one QEMU run of a harness firmware produced.

    ``instructions_marked`` counts only the instructions executed inside ``model_infer``
    (from its first instruction through its return), summed over all samples;
    ``instructions_total`` counts everything from reset to exit (startup, file I/O). Both are
    None when the run did not count.
    """

    outputs: bytes
    samples: int
    instructions_total: int | None
    instructions_marked: int | None
    exit_code: int
    console: str
    core: str
    machine: str

    @property
    def instructions_per_sample(self) -> float | None:
        if self.instructions_marked is None or self.samples == 0:
            return None
        return self.instructions_marked / self.samples


def plugin_cache_dir() -> Path:
    from edgeshift.targets.host import cache_dir

    return cache_dir() / "mcu"


def plugin_path(progress: Progress | None = None) -> Path:
    """The instruction-counting plugin, built with the host's gcc on first use.

    Cached as ``insn_count-<source sha256>.so``: a changed source gets a new file, and a
    concurrent build by another process only ever replaces a complete file.
    """
    source = FIRMWARE_DIR / "insn_count.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = plugin_cache_dir()
    target = cache / f"insn_count-{digest}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"building the QEMU instruction-count plugin into {cache}")
    fd, tmp_name = tempfile.mkstemp(prefix=".insn_count-", suffix=".so", dir=cache)
    os.close(fd)
    tmp = Path(tmp_name)
    argv = [HOST_CC, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(source)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        raise BackendError(
            f"host {HOST_CC} not found (it builds the QEMU counting plugin) — install it with: "
            f"sudo {APT_INSTALL} gcc"
        ) from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise BackendError(f"building the QEMU counting plugin failed: {first}")
    os.replace(tmp, target)
    return target


def qemu_command(
    spec: CoreSpec,
    elf: Path,
    *,
    plugin: Path | None = None,
    mark_begin: int | None = None,
    mark_end: int | None = None,
) -> list[str]:
    """The qemu-system-arm command line; the run directory is QEMU's working directory."""
    argv = ["qemu-system-arm", "-M", spec.qemu_machine, "-nographic", "-monitor", "none"]
    argv += ["-serial", "none", "-semihosting-config", "enable=on,target=native"]
    argv += ["-kernel", str(elf)]
    if plugin is not None:
        # Relative report path: plugin arguments are split on commas, the run dir has none.
        arg = f"{plugin},out={REPORT_FILE}"
        if mark_begin is not None and mark_end is not None:
            arg += f",begin={mark_begin:#x},end={mark_end:#x}"
        argv += ["-plugin", arg]
    return argv


def parse_plugin_report(text: str) -> dict[str, int]:
    """The plugin's ``total N`` / ``marked M`` / ``pairs P`` lines as a dict."""
    report: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            report[parts[0]] = int(parts[1])
    if not {"total", "marked", "pairs"} <= report.keys():
        raise BackendError(f"the QEMU counting plugin wrote an incomplete report: {text!r}")
    return report


def harness_samples(console: str) -> int | None:
    """N from the harness's final ``es-harness: ok N`` line, None if it never got there."""
    found = re.findall(r"^es-harness: ok (\d+)\s*$", console, flags=re.MULTILINE)
    return int(found[-1]) if found else None


def describe_fault(line: str) -> str:
    """startup.c's ``es-fault: ...`` line with its CFSR bits named."""
    text = line.removeprefix("es-fault:").strip()
    m = re.search(r"cfsr=0x([0-9a-f]+)", text)
    if m:
        cfsr = int(m.group(1), 16)
        named = [what for bit, what in _CFSR_BITS.items() if cfsr >> bit & 1]
        if named:
            text += f" ({', '.join(named)})"
    return text


def _console_line(console: str, prefix: str) -> str | None:
    for line in console.splitlines():
        if line.startswith(prefix):
            return line.strip()
    return None


def _function_at(elf: Path, pc: int) -> str | None:
    for name, (addr, size) in symbol_table(elf).items():
        if size and addr & ~1 <= pc < (addr & ~1) + size:
            return name
    return None


def run_firmware(
    elf: Path,
    core: str,
    inputs: bytes,
    *,
    output_bytes_per_sample: int,
    timeout_s: float = 120,
    count_instructions: bool = True,
    progress: Progress | None = None,
) -> FirmwareRun:
    """Run a harness firmware on ``core``'s QEMU board over the concatenated ``inputs``.

    Returns the concatenated outputs and, with ``count_instructions``, the exact counts. A
    QEMU failure, a fault, a harness error or a run past ``timeout_s`` (QEMU is killed) is a
    one-line BackendError naming the board.
    """
    spec = core_spec(core)
    check_toolchain(need_qemu=True)
    elf = Path(elf).resolve()
    plugin = marks = None
    if count_instructions:
        plugin = plugin_path(progress)
        symbols = symbol_table(elf)
        if MARK_BEGIN not in symbols or MARK_END not in symbols:
            raise BackendError(
                f"{elf} has no {MARK_BEGIN}/{MARK_END}: build it with the edgeshift harness "
                "(build_firmware(..., harness=True)) or run with count_instructions=False"
            )
        marks = (symbols[MARK_BEGIN][0], symbols[MARK_END][0])
    argv = qemu_command(
        spec,
        elf,
        plugin=plugin,
        mark_begin=marks[0] if marks else None,
        mark_end=marks[1] if marks else None,
    )
    with tempfile.TemporaryDirectory(prefix="edgeshift-qemu-") as tmp:
        run_dir = Path(tmp)
        (run_dir / INPUT_FILE).write_bytes(inputs)
        if progress:
            progress(f"running {elf.name} on {spec.board} under qemu-system-arm")
        try:
            done = subprocess.run(
                argv,
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )  # on timeout subprocess.run kills QEMU before raising
        except subprocess.TimeoutExpired:
            raise BackendError(
                f"QEMU run timed out after {timeout_s:g} s on {spec.board}; the firmware hangs "
                "or needs longer — check model_infer for an endless loop, or raise the timeout"
            ) from None
        console = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        _raise_for_failure(done.returncode, console, spec, elf)
        samples = harness_samples(console)
        if samples is None:
            raise BackendError(
                f"the firmware on {spec.board} exited 0 without the harness's 'es-harness: ok' "
                f"line (console: {_one_line(console)}) — build it with the edgeshift harness"
            )
        out_path = run_dir / OUTPUT_FILE
        outputs = out_path.read_bytes() if out_path.exists() else b""
        if len(outputs) != samples * output_bytes_per_sample:
            raise BackendError(
                f"the firmware on {spec.board} wrote {len(outputs)} output bytes for {samples} "
                f"samples, not {samples} x {output_bytes_per_sample} — check MODEL_OUTPUT_BYTES "
                "in model.h against output_bytes_per_sample"
            )
        total = marked = None
        if count_instructions:
            report_path = run_dir / REPORT_FILE
            if not report_path.exists():
                raise BackendError(
                    f"the QEMU counting plugin wrote no report on {spec.board} — check that "
                    "qemu-system-arm supports -plugin (QEMU >= 7.2 built with plugins)"
                )
            report = parse_plugin_report(report_path.read_text())
            if report["pairs"] != samples:
                raise BackendError(
                    f"the counting plugin saw {report['pairs']} marked inferences but the "
                    f"harness ran {samples} on {spec.board} — the marks are not where the "
                    "harness calls model_infer"
                )
            total = report["total"]
            marked = report["marked"] - MARK_OVERHEAD_INSNS * report["pairs"]
    return FirmwareRun(
        outputs=outputs,
        samples=samples,
        instructions_total=total,
        instructions_marked=marked,
        exit_code=done.returncode,
        console=console,
        core=spec.id,
        machine=spec.qemu_machine,
    )


def _one_line(text: str, limit: int = 200) -> str:
    flat = " | ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or "empty"
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _raise_for_failure(code: int, console: str, spec: CoreSpec, elf: Path) -> None:
    if code == 0:
        return
    fault = _console_line(console, "es-fault:")
    if code == FAULT_EXIT_CODE and fault:
        where = ""
        m = re.search(r"pc=0x([0-9a-f]+)", fault)
        if m:
            func = _function_at(elf, int(m.group(1), 16))
            where = f" in {func}" if func else ""
        raise BackendError(
            f"the firmware faulted on {spec.board}{where}: {describe_fault(fault)} — find the "
            f"line with: arm-none-eabi-addr2line -e {elf} <pc>"
        )
    harness = _console_line(console, "es-harness: error:")
    if harness:
        reason = harness.removeprefix("es-harness: error:").strip()
        raise BackendError(f"the firmware harness failed on {spec.board}: {reason}")
    lockup = _console_line(console, "qemu: fatal:")
    if lockup:
        # QEMU aborts on a fault it cannot escalate (e.g. in the handler, or a bad stack).
        reason = lockup.removeprefix("qemu: fatal:").strip()
        raise BackendError(
            f"QEMU stopped the firmware on {spec.board}: {reason} — a fault the fault handler "
            "could not report, usually a corrupted stack pointer or a jump into data"
        )
    qemu = _console_line(console, "qemu-system-arm:")
    if qemu:
        raise BackendError(f"qemu-system-arm failed on {spec.board}: {qemu}")
    raise BackendError(
        f"the firmware exited with code {code} on {spec.board} (console: {_one_line(console)})"
    )


__all__ = [
    "CORES",
    "MARK_OVERHEAD_INSNS",
    "CoreSpec",
    "FirmwareRun",
    "build_firmware",
    "check_toolchain",
    "describe_fault",
    "harness_samples",
    "parse_plugin_report",
    "plugin_path",
    "qemu_command",
    "run_firmware",
    "section_sizes",
    "support_sources",
    "symbol_size",
]
