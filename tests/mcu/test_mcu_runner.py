"""The Cortex-M runner: firmware builds with arm-none-eabi-gcc and runs under qemu-system-arm.

Tiny hand-written model libraries stand in for compiled models, so every expected output,
instruction count and section size is computed here by hand or with numpy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeshift.errors import BackendError
from edgeshift.mcu import runner, toolchain
from edgeshift.mcu.runner import (
    CORES,
    build_firmware,
    check_toolchain,
    run_firmware,
    section_sizes,
    symbol_size,
)


def _toolchain_problem() -> str | None:
    try:
        check_toolchain(need_qemu=True)
    except BackendError as exc:
        return str(exc)
    return None


_MISSING = _toolchain_problem()
needs_toolchain = pytest.mark.skipif(
    _MISSING is not None, reason=f"no Cortex-M toolchain: {_MISSING}"
)
ALL_CORES = list(CORES)

# --- model libraries -------------------------------------------------------------------------

N_IN, N_OUT = 32, 8
WEIGHTS = (np.arange(N_OUT * N_IN).reshape(N_OUT, N_IN) * 37 % 255 - 127).astype(np.int8)


def _model_h(n_in: int, n_out: int) -> str:
    return (
        "#include <stdint.h>\n"
        f"#define MODEL_INPUT_BYTES {n_in}\n#define MODEL_OUTPUT_BYTES {n_out}\n"
        "int model_infer(const int8_t *in, int8_t *out);\n"
    )


# out[j] = ((sum_i in[i] * W[j, i]) >> 8) ^ 0x55, with a 32-bit accumulator arena in .bss.
# No branch depends on the data, so every sample executes the same instructions.
DOT_C = """#include "model.h"
static const int8_t es_weights[] = {ES_WEIGHTS};
static int32_t es_acc[MODEL_OUTPUT_BYTES];
int model_infer(const int8_t *in, int8_t *out) {
    for (int j = 0; j < MODEL_OUTPUT_BYTES; j++) {
        int32_t acc = 0;
        for (int i = 0; i < MODEL_INPUT_BYTES; i++)
            acc += (int32_t)in[i] * es_weights[j * MODEL_INPUT_BYTES + i];
        es_acc[j] = acc;
    }
    for (int j = 0; j < MODEL_OUTPUT_BYTES; j++) out[j] = (int8_t)((es_acc[j] >> 8) ^ 0x55);
    return 0;
}
""".replace("ES_WEIGHTS", ", ".join(str(int(w)) for w in WEIGHTS.ravel()))

# Exactly 2 * ES_LOOP + 3 instructions: movs, ES_LOOP x (subs, bne), movs, bx lr.
LOOP_C = """#include "model.h"
__attribute__((naked)) int model_infer(const int8_t *in, int8_t *out) {
    __asm volatile("movs r2, %0\\n1: subs r2, #1\\n bne 1b\\n movs r0, #0\\n bx lr\\n"
                   :: "i"(ES_LOOP));
}
"""

# A .bss arena, a const table (.rodata) and initialised data (.data) of chosen sizes.
SIZES_C = """#include "model.h"
static int8_t es_arena[ES_ARENA_BYTES];
const int8_t es_table[ES_TABLE_BYTES] = {1, [ES_TABLE_BYTES - 1] = 2};
int8_t es_initialised[ES_DATA_BYTES] = {1, [ES_DATA_BYTES - 1] = 3};
int model_infer(const int8_t *in, int8_t *out) {
    /* Touch both ends of every array, so a misplaced section would show in the outputs. */
    for (int i = 0; i < MODEL_INPUT_BYTES; i++) es_arena[ES_ARENA_BYTES - 1 - i] = in[i];
    for (int i = 0; i < MODEL_OUTPUT_BYTES; i++)
        out[i] = es_arena[ES_ARENA_BYTES - 1 - i] + es_arena[i] + es_table[i]
            + es_table[ES_TABLE_BYTES - 1] + es_initialised[i] + es_initialised[ES_DATA_BYTES - 1];
    return 0;
}
"""

# Sum of squares through the core's SIMD (Helium on M55, DSP SMLAD on M4/M7) and the FPU;
# the #errors prove the CoreSpec flags turn those extensions on.
EXTENSIONS_C = """#include <string.h>
#include "model.h"
#ifndef __ARM_FP
#error "no hardware floating point"
#endif
#if ES_EXPECT_MVE
#include <arm_mve.h>
#ifndef __ARM_FEATURE_MVE
#error "no Helium"
#endif
#else
#include <arm_acle.h>
#ifndef __ARM_FEATURE_DSP
#error "no DSP extension"
#endif
#endif
int model_infer(const int8_t *in, int8_t *out) {
    int32_t acc = 0;
#if ES_EXPECT_MVE
    for (int i = 0; i < MODEL_INPUT_BYTES; i += 16) {
        int8x16_t v = vld1q_s8(in + i);
        acc = vmladavaq_s8(acc, v, v);
    }
#else
    for (int i = 0; i < MODEL_INPUT_BYTES; i += 4) {
        int32_t x;
        memcpy(&x, in + i, 4);
        int32_t odd = (int32_t)(((uint32_t)x >> 8) | ((uint32_t)x << 24));
        acc = __smlad(__sxtb16(x), __sxtb16(x), acc);
        acc = __smlad(__sxtb16(odd), __sxtb16(odd), acc);
    }
#endif
    out[0] = (int8_t)(acc >> 13);
    out[1] = (int8_t)(int32_t)((float)acc * (1.0f / 16384.0f));
    return 0;
}
"""

FAULTS_C = """#include "model.h"
volatile int es_divisor = 0;
int model_infer(const int8_t *in, int8_t *out) {
#if ES_FAULT == 1
    out[0] = (int8_t)(in[0] / es_divisor);
#elif ES_FAULT == 2
    void (*volatile jump)(void) = (void (*)(void))0xF0000001u; /* execute-never space */
    jump();
#else
    for (;;) __asm volatile("");
#endif
    (void)in; (void)out;
    return 0;
}
"""


def _library(root: Path, name: str, source: str, n_in: int = N_IN, n_out: int = N_OUT) -> Path:
    lib = root / name
    lib.mkdir()
    (lib / "model.h").write_text(_model_h(n_in, n_out))
    (lib / "model.c").write_text(source)
    return lib


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mcu-libs")
    return {
        "dot": _library(root, "dot", DOT_C),
        "loop": _library(root, "loop", LOOP_C, 4, 4),
        "sizes": _library(root, "sizes", SIZES_C, 16, 16),
        "faults": _library(root, "faults", FAULTS_C, 4, 4),
        "extensions": _library(root, "extensions", EXTENSIONS_C, 32, 2),
    }


def _build(lib: Path, core: str, out: Path, **kw) -> Path:
    return build_firmware([lib / "model.c"], [lib], core, out, **kw)


def _host_dot(x: np.ndarray) -> np.ndarray:
    acc = x.astype(np.int32) @ WEIGHTS.T.astype(np.int32)
    return ((acc >> 8) ^ 0x55).astype(np.int8)


# --- on QEMU ---------------------------------------------------------------------------------


@needs_toolchain
@pytest.mark.parametrize("core", ALL_CORES)
def test_outputs_match_host_and_counts_are_exact_and_linear(core, libs, tmp_path):
    elf = _build(libs["dot"], core, tmp_path)
    x = np.random.default_rng(7).integers(-128, 128, size=(100, N_IN), dtype=np.int8)

    run = run_firmware(elf, core, x.tobytes(), output_bytes_per_sample=N_OUT)
    again = run_firmware(elf, core, x.tobytes(), output_bytes_per_sample=N_OUT)
    half = run_firmware(elf, core, x[:50].tobytes(), output_bytes_per_sample=N_OUT)

    assert run.samples == 100 and run.exit_code == 0
    got = np.frombuffer(run.outputs, dtype=np.int8).reshape(100, N_OUT)
    np.testing.assert_array_equal(got, _host_dot(x))
    assert (again.instructions_total, again.instructions_marked) == (
        run.instructions_total,
        run.instructions_marked,
    )
    assert run.instructions_marked is not None and run.instructions_marked > 0
    # The kernel has no data-dependent branch: the count per sample is one number.
    assert run.instructions_marked == 2 * half.instructions_marked
    assert run.instructions_total > run.instructions_marked  # startup and file I/O on top


@needs_toolchain
@pytest.mark.parametrize("core", ALL_CORES)
def test_a_known_loop_counts_exactly(core, libs, tmp_path):
    loop = 100
    elf = _build(libs["loop"], core, tmp_path, defines={"ES_LOOP": str(loop)})
    run = run_firmware(elf, core, bytes(4 * 10), output_bytes_per_sample=4)
    assert run.samples == 10
    assert run.instructions_marked == 10 * (2 * loop + 3)
    assert run.instructions_per_sample == 2 * loop + 3


@needs_toolchain
def test_run_without_counting_gives_outputs_only(libs, tmp_path):
    elf = _build(libs["dot"], "cortex-m4", tmp_path)
    x = np.arange(N_IN * 3, dtype=np.int64).astype(np.int8).reshape(3, N_IN)
    said: list[str] = []
    run = run_firmware(
        elf,
        "cortex-m4",
        x.tobytes(),
        output_bytes_per_sample=N_OUT,
        count_instructions=False,
        progress=said.append,
    )
    assert said == ["running firmware.elf on mps2-an386 (cortex-m4) under qemu-system-arm"]
    assert run.instructions_total is None and run.instructions_marked is None
    np.testing.assert_array_equal(
        np.frombuffer(run.outputs, np.int8).reshape(3, N_OUT), _host_dot(x)
    )


@needs_toolchain
def test_an_emitted_copy_of_the_harness_and_the_startup_are_linked_once(libs, tmp_path):
    # How compile --verify builds: its out dir holds main.c, a copy of the harness.
    main_c = tmp_path / "main.c"
    main_c.write_bytes((toolchain.FIRMWARE_DIR / "harness.c").read_bytes())
    lib = libs["dot"]
    sources = [lib / "model.c", main_c, *runner.support_sources("cortex-m55")]
    elf = build_firmware(sources, [lib], "cortex-m55", tmp_path / "out")
    x = np.full((2, N_IN), 3, dtype=np.int8)
    run = run_firmware(elf, "cortex-m55", x.tobytes(), output_bytes_per_sample=N_OUT)
    np.testing.assert_array_equal(
        np.frombuffer(run.outputs, np.int8).reshape(2, N_OUT), _host_dot(x)
    )


@needs_toolchain
def test_section_sizes_and_symbol_sizes_are_exact(libs, tmp_path):
    small = {"ES_ARENA_BYTES": "4096", "ES_TABLE_BYTES": "1000", "ES_DATA_BYTES": "64"}
    large = {"ES_ARENA_BYTES": "5120", "ES_TABLE_BYTES": "1200", "ES_DATA_BYTES": "96"}
    elf_small = _build(libs["sizes"], "cortex-m4", tmp_path / "small", defines=small)
    elf_large = _build(libs["sizes"], "cortex-m4", tmp_path / "large", defines=large)

    assert symbol_size(elf_small, "es_arena") == 4096
    assert symbol_size(elf_small, "es_table") == 1000
    assert symbol_size(elf_large, "es_initialised") == 96
    a, b = section_sizes(elf_small), section_sizes(elf_large)
    assert set(a) == {"text", "rodata", "data", "bss"}
    # The changes are multiples of 16 (the largest alignment of any object here: the harness's
    # buffers), so no padding moves and each section grows by exactly the change.
    assert {k: b[k] - a[k] for k in a} == {"text": 0, "rodata": 200, "data": 32, "bss": 1024}
    assert a["bss"] >= 4096 and a["rodata"] >= 1000 and a["data"] >= 64
    with pytest.raises(BackendError, match="symbol 'es_nothing' is not in"):
        symbol_size(elf_small, "es_nothing")


@needs_toolchain
@pytest.mark.parametrize("core", ALL_CORES)
def test_a_model_of_400_kb_flash_and_300_kb_ram_fits_and_runs(core, libs, tmp_path):
    sizes = {"ES_ARENA_BYTES": str(296 * 1024), "ES_TABLE_BYTES": str(400 * 1024)}
    elf = _build(libs["sizes"], core, tmp_path, defines={**sizes, "ES_DATA_BYTES": "4096"})
    got = section_sizes(elf)
    assert got["bss"] + got["data"] >= 300 * 1024 and got["rodata"] >= 400 * 1024
    x = np.arange(16, dtype=np.int8)
    run = run_firmware(elf, core, x.tobytes(), output_bytes_per_sample=16)
    # arena[i] is still 0 (it is cleared at reset), table = 1 at 0 and 2 at the end,
    # initialised = 1 at 0 and 3 at the end.
    expected = x + 2 + 3 + np.where(np.arange(16) == 0, 2, 0)
    np.testing.assert_array_equal(np.frombuffer(run.outputs, np.int8), expected)


@needs_toolchain
@pytest.mark.parametrize("core", ALL_CORES)
def test_the_cores_simd_and_fpu_are_on(core, libs, tmp_path):
    expect_mve = "1" if CORES[core].has_mve else "0"
    elf = _build(libs["extensions"], core, tmp_path, defines={"ES_EXPECT_MVE": expect_mve})
    x = np.random.default_rng(3).integers(-128, 128, size=(20, 32), dtype=np.int8)
    run = run_firmware(elf, core, x.tobytes(), output_bytes_per_sample=2)
    acc = (x.astype(np.int32) ** 2).sum(axis=1)
    # acc / 2^14 is exact in float32 (acc < 2^24); the C cast truncates toward zero.
    expected = np.stack([acc >> 13, np.trunc(acc / 16384.0)], axis=1).astype(np.int8)
    np.testing.assert_array_equal(np.frombuffer(run.outputs, np.int8).reshape(20, 2), expected)


@needs_toolchain
@pytest.mark.parametrize(
    ("core", "fault", "expected"),
    [
        ("cortex-m4", 1, r"faulted on mps2-an386 \(cortex-m4\) in model_infer: .*divide by zero"),
        ("cortex-m55", 2, r"faulted on mps3-an547 \(cortex-m55\).*instruction access violation"),
    ],
)
def test_a_fault_is_one_line_naming_the_board_and_cause(core, fault, expected, libs, tmp_path):
    elf = _build(libs["faults"], core, tmp_path, defines={"ES_FAULT": str(fault)})
    with pytest.raises(BackendError, match=expected) as info:
        run_firmware(elf, core, bytes(4), output_bytes_per_sample=4, timeout_s=30)
    assert "\n" not in str(info.value)


@needs_toolchain
def test_an_endless_loop_times_out_with_one_line(libs, tmp_path):
    elf = _build(libs["faults"], "cortex-m7", tmp_path, defines={"ES_FAULT": "3"})
    with pytest.raises(
        BackendError, match=r"^QEMU run timed out after 1.5 s on mps2-an500 \(cortex-m7\); "
    ) as info:
        run_firmware(elf, "cortex-m7", bytes(4), output_bytes_per_sample=4, timeout_s=1.5)
    assert "\n" not in str(info.value)


@needs_toolchain
def test_a_partial_sample_is_a_harness_error(libs, tmp_path):
    elf = _build(libs["dot"], "cortex-m4", tmp_path)
    with pytest.raises(BackendError, match="harness failed on .*input file ends inside a sample"):
        run_firmware(elf, "cortex-m4", bytes(N_IN + 1), output_bytes_per_sample=N_OUT)


@needs_toolchain
@pytest.mark.parametrize(
    ("arena", "table", "expected"),
    [(600 * 1024, 16, r"RAM overflowed by [\d,]+ B"), (16, 600 * 1024, r"FLASH overflowed by")],
)
def test_a_model_too_large_for_the_board_says_which_memory(arena, table, expected, libs, tmp_path):
    defines = {"ES_ARENA_BYTES": str(arena), "ES_TABLE_BYTES": str(table), "ES_DATA_BYTES": "16"}
    with pytest.raises(BackendError, match="does not fit mps3-an547 \\(cortex-m55\\): " + expected):
        _build(libs["sizes"], "cortex-m55", tmp_path, defines=defines)


@needs_toolchain
def test_a_compile_error_is_one_line_with_the_log(tmp_path):
    lib = _library(
        tmp_path,
        "broken",
        '#include "model.h"\nint model_infer(const int8_t *in, int8_t *out) { return x; }\n',
    )
    with pytest.raises(BackendError) as info:
        _build(lib, "cortex-m4", tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    assert "'x' undeclared" in message
    assert str(tmp_path / "out" / "build.log") in message
    assert "'x' undeclared" in (tmp_path / "out" / "build.log").read_text()


@needs_toolchain
def test_the_plugin_is_cached_by_source_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(tmp_path))
    first = runner.plugin_path()
    assert first.parent == tmp_path / "mcu" and first.name.startswith("insn_count-")
    stamp = first.stat().st_mtime_ns
    assert runner.plugin_path() == first and first.stat().st_mtime_ns == stamp


# --- no toolchain ----------------------------------------------------------------------------


def test_missing_toolchain_names_the_apt_get_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BackendError) as info:
        check_toolchain(need_qemu=True)
    message = str(info.value)
    assert (
        "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc" in message
    )
    assert "arm-none-eabi-gcc" in message and "qemu-system-arm" in message
    with pytest.raises(BackendError, match="apt-get install gcc-arm-none-eabi"):
        build_firmware([Path("model.c")], [], "cortex-m4", Path("unused"))


def test_missing_qemu_only_matters_when_running(monkeypatch):
    present = lambda name: None if name == "qemu-system-arm" else f"/usr/bin/{name}"  # noqa: E731
    monkeypatch.setattr(shutil, "which", present)
    monkeypatch.setattr(toolchain, "_has_newlib", lambda: True)
    with pytest.raises(
        BackendError, match=r"\(qemu-system-arm not found\).*sudo apt-get install gcc-arm"
    ):
        check_toolchain(need_qemu=True)
    check_toolchain(need_qemu=False)  # building needs no QEMU


def test_missing_newlib_is_named(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(toolchain, "_has_newlib", lambda: False)
    with pytest.raises(
        BackendError, match=r"newlib \(rdimon.specs\) not found.*libnewlib-arm-none-eabi"
    ):
        check_toolchain(need_qemu=False)


# --- pure parts ------------------------------------------------------------------------------

SIZE_A = """firmware.elf  :
section             size        addr
.isr_vector           64           0
.text              33384          64
.rodata             1616       33448
.ARM.exidx             8       35064
.init_array            4       35072
.data               2488   536870912
.bss                 264   536873408
.debug_info       180599           0
.comment              38           0
.ARM.attributes       50           0
Total             218515
"""


def test_size_output_maps_sections_to_four_kinds():
    assert toolchain.parse_size_sections(SIZE_A) == {
        "text": 33384,
        "rodata": 64 + 1616 + 8 + 4,
        "data": 2488,
        "bss": 264,
    }
    with pytest.raises(BackendError, match=r"section \.weights \(100 B\)"):
        toolchain.parse_size_sections(SIZE_A + ".weights 100 4096\n")


def test_nm_and_plugin_report_parse():
    nm = "0000005c 00000002 T es_mark_begin\n20000000 00001000 b es_arena\n00000100 T _init\n"
    assert toolchain.parse_nm_symbols(nm) == {
        "es_mark_begin": (0x5C, 2),
        "es_arena": (0x20000000, 4096),
        "_init": (0x100, 0),
    }
    assert runner.parse_plugin_report("total 10\nmarked 4\npairs 2\n") == {
        "total": 10,
        "marked": 4,
        "pairs": 2,
    }
    with pytest.raises(BackendError, match="incomplete report"):
        runner.parse_plugin_report("total 10\n")


def test_fault_lines_and_harness_lines():
    line = "es-fault: HardFault at pc=0x00000052 lr=0x000002cb cfsr=0x02000100 hfsr=0x40000000"
    assert runner.describe_fault(line).endswith("(instruction bus error, divide by zero)")
    assert runner.harness_samples("hello\nes-harness: ok 12\n") == 12
    assert runner.harness_samples("es-harness: error: x (sample 3)\n") is None


def test_compiler_error_line_prefers_the_cause_over_collect2():
    log = (
        "model.c:3:5: warning: unused variable 'y'\n"
        "ld: model.o: in function `model_infer':\n"
        "model.c:16: undefined reference to `__ror'\n"
        "collect2: error: ld returned 1 exit status\n"
    )
    assert toolchain.first_compiler_error(log) == "model.c:16: undefined reference to `__ror'"


def test_qemu_command_names_board_semihosting_and_marks():
    argv = runner.qemu_command(
        CORES["cortex-m55"],
        Path("/x/fw.elf"),
        plugin=Path("/c/p.so"),
        mark_begin=0x5C,
        mark_end=0x60,
    )
    assert argv[:3] == ["qemu-system-arm", "-M", "mps3-an547"]
    assert "enable=on,target=native" in argv
    assert argv[-1] == "/c/p.so,out=es_insn_count.txt,begin=0x5c,end=0x60"


def test_unknown_core_is_named():
    with pytest.raises(BackendError, match="unknown Cortex-M core 'cortex-m0'.*cortex-m4"):
        toolchain.core_spec("cortex-m0")
