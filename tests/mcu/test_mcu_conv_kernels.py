"""The int8 MAC kernels (kernels/es_conv.h) are bit-exact with the requantization contract.

The C is compiled with the host's gcc twice, the portable path and the DSP path (its Arm
instructions emulated in C by es_acle.h, -DES_FORCE_DSP), called through ctypes and compared
bit for bit with a numpy implementation of the contract written here from ir.py's docstring.
A slow test runs the real DSP (Cortex-M4) and Helium (Cortex-M55) builds under QEMU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeshift.mcu import ir, kernel_specs

KERNEL_DIR = Path(ir.__file__).parent / "kernels"
SOURCES = ["es_conv.c", "es_dwconv.c", "es_fc.c"]
CANARY = 0x5A
CANARY_BYTES = 64
C_INT8_P = ctypes.POINTER(ctypes.c_int8)


class ConvT(ctypes.Structure):
    _fields_ = (
        [(n, ctypes.c_int16) for n in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c")]
        + [(n, ctypes.c_uint8) for n in ("kh", "kw", "stride_h", "stride_w", "pad_t", "pad_l")]
        + [(n, ctypes.c_uint8) for n in ("dil_h", "dil_w")]
        + [(n, ctypes.c_int32) for n in ("in_zp", "out_zp", "act_min", "act_max")]
        + [("weights", C_INT8_P), ("bias", ctypes.POINTER(ctypes.c_int32))]
        + [("mult", ctypes.POINTER(ctypes.c_float))]
    )


class FcT(ctypes.Structure):
    _fields_ = (
        [(n, ctypes.c_int16) for n in ("in_n", "out_n")]
        + [(n, ctypes.c_int32) for n in ("in_zp", "out_zp", "act_min", "act_max")]
        + [("weights", C_INT8_P), ("bias", ctypes.POINTER(ctypes.c_int32))]
        + [("mult", ctypes.POINTER(ctypes.c_float))]
    )


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ctypes.CDLL]:
    if shutil.which("gcc") is None:
        pytest.skip("host gcc is not installed")
    out = tmp_path_factory.mktemp("kernels")
    built = {}
    for path, flags in (("portable", []), ("dsp", ["-DES_FORCE_DSP"])):
        so = out / f"es_{path}.so"
        argv = ["gcc", "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
        argv += [*flags, f"-I{KERNEL_DIR}", *(str(KERNEL_DIR / s) for s in SOURCES), "-o"]
        subprocess.run([*argv, str(so)], check=True, capture_output=True)
        built[path] = ctypes.CDLL(str(so))
    return built


# --- the contract, in numpy ---------------------------------------------------------------


def requant(acc: np.ndarray, mult: np.ndarray, zp: int, act_min: int, act_max: int) -> np.ndarray:
    f = acc.astype(np.int32).astype(np.float32) * mult.astype(np.float32)  # one fp32 multiply
    f = np.clip(f, np.float32(act_min - zp), np.float32(act_max - zp))
    return (np.rint(f) + zp).astype(np.int8)  # np.rint rounds half to even


def out_hw(op: ir.Conv2D | ir.DepthwiseConv2D, h: int, w: int) -> tuple[int, int]:
    kh, kw = op.weights.shape[1:3] if isinstance(op, ir.Conv2D) else op.weights.shape[:2]
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = op.stride, op.dilation, op.pad
    return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1


def conv_ref(op: ir.Conv2D | ir.DepthwiseConv2D, x: np.ndarray, in_zp: int, out_zp: int):
    depthwise = isinstance(op, ir.DepthwiseConv2D)
    kh, kw = op.weights.shape[:2] if depthwise else op.weights.shape[1:3]
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = op.stride, op.dilation, op.pad
    oh, ow = out_hw(op, x.shape[0], x.shape[1])
    xp = np.pad(x.astype(np.int64) - in_zp, ((pt, pb), (pl, pr), (0, 0)))  # padding: x - zp = 0
    acc = np.zeros((oh, ow, op.bias.size), np.int64) + op.bias
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[ky * dh :: sh][:oh, kx * dw :: sw][:, :ow]
            if depthwise:
                acc += patch * op.weights[ky, kx].astype(np.int64)
            else:
                acc += patch @ op.weights[:, ky, kx, :].astype(np.int64).T
    return requant(acc, op.multiplier, out_zp, op.act_min, op.act_max)


def fc_ref(op: ir.FullyConnected, x: np.ndarray, in_zp: int, out_zp: int) -> np.ndarray:
    acc = op.weights.astype(np.int64) @ (x.astype(np.int64) - in_zp) + op.bias
    return requant(acc, op.multiplier, out_zp, op.act_min, op.act_max)


# --- cases --------------------------------------------------------------------------------


@dataclass
class Case:
    op: ir.Conv2D | ir.DepthwiseConv2D | ir.FullyConnected
    x: np.ndarray
    in_zp: int
    out_zp: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if isinstance(self.op, ir.FullyConnected):
            return (self.op.weights.shape[0],)
        return (*out_hw(self.op, self.x.shape[0], self.x.shape[1]), self.op.bias.size)

    def expected(self) -> np.ndarray:
        if isinstance(self.op, ir.FullyConnected):
            return fc_ref(self.op, self.x, self.in_zp, self.out_zp)
        return conv_ref(self.op, self.x, self.in_zp, self.out_zp)


def make_case(
    rng: np.random.Generator,
    kind: str,
    in_shape: tuple[int, ...],
    out_c: int = 0,
    kernel: tuple[int, int] = (1, 1),
    stride: tuple[int, int] = (1, 1),
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilation: tuple[int, int] = (1, 1),
    gain: float = 1.0,
    act: tuple[int, int] = (-128, 127),
) -> Case:
    in_zp, out_zp = (int(v) for v in rng.integers(-128, 128, 2))
    if kind == "conv":
        w = rng.integers(-128, 128, (out_c, *kernel, in_shape[-1]), dtype=np.int8)
    elif kind == "dw":
        w = rng.integers(-128, 128, (*kernel, in_shape[-1]), dtype=np.int8)
    else:
        w = rng.integers(-128, 128, (out_c, int(np.prod(in_shape))), dtype=np.int8)
    n_out = w.shape[0] if kind != "dw" else in_shape[-1]
    k = w[0].size if kind != "dw" else kernel[0] * kernel[1]
    # |acc| ~ sqrt(K) * 74^2 for uniform int8 data: scale it to about +-64 LSB (gain 1)
    mult = (gain * 64 / (np.sqrt(k) * 5500) * rng.uniform(0.5, 2, n_out)).astype(np.float32)
    bias = rng.integers(-20000, 20000, n_out).astype(np.int32)
    x = rng.integers(-128, 128, in_shape, dtype=np.int8)
    lo, hi = act
    if kind == "conv":
        op: ir.Conv2D | ir.DepthwiseConv2D | ir.FullyConnected = ir.Conv2D(
            "x", "y", w, bias, mult, stride, pad, dilation, lo, hi
        )
    elif kind == "dw":
        op = ir.DepthwiseConv2D("x", "y", w, bias, mult, stride, pad, dilation, lo, hi)
    else:
        op = ir.FullyConnected("x", "y", w, bias, mult, lo, hi)
    return Case(op, x, in_zp, out_zp)


def _ptr(a: np.ndarray, ctype: type) -> ctypes._Pointer:  # type: ignore[type-arg]
    return a.ctypes.data_as(ctypes.POINTER(ctype))


def run_case(lib: ctypes.CDLL, case: Case, inplace: bool = False) -> np.ndarray:
    """Run CASE's kernel; checks that nothing is written past the output or the scratch."""
    op = case.op
    w = np.ascontiguousarray(op.weights, np.int8)
    bias = np.ascontiguousarray(op.bias, np.int32)
    mult = np.ascontiguousarray(op.multiplier, np.float32)
    n_in, n_out = case.x.size, int(np.prod(case.out_shape))
    scratch_n = kernel_specs.scratch_bytes(op, case.in_shape, case.out_shape, "cortex-m4")
    scratch = np.full(scratch_n + CANARY_BYTES, CANARY, np.uint8)
    if inplace:
        buf = np.full(max(n_in, n_out) + CANARY_BYTES, CANARY, np.int8)
        buf[:n_in] = case.x.reshape(-1)
        src = dst = buf
    else:
        src = np.ascontiguousarray(case.x.reshape(-1))
        dst = buf = np.full(n_out + CANARY_BYTES, CANARY, np.int8)
    args = (_ptr(src, ctypes.c_int8), _ptr(dst, ctypes.c_int8), _ptr(scratch, ctypes.c_uint8))
    common = dict(in_zp=case.in_zp, out_zp=case.out_zp, act_min=op.act_min, act_max=op.act_max)
    refs = dict(
        weights=_ptr(w, ctypes.c_int8),
        bias=_ptr(bias, ctypes.c_int32),
        mult=_ptr(mult, ctypes.c_float),
    )
    if isinstance(op, ir.FullyConnected):
        p = FcT(in_n=n_in, out_n=n_out, **common, **refs)
        lib.es_fc(ctypes.byref(p), *args)
    else:
        kh, kw = op.weights.shape[:2] if isinstance(op, ir.DepthwiseConv2D) else w.shape[1:3]
        (ih, iw, ic), (oh, ow, oc) = case.in_shape, case.out_shape
        pc = ConvT(
            in_h=ih, in_w=iw, in_c=ic, out_h=oh, out_w=ow, out_c=oc, kh=kh, kw=kw,
            stride_h=op.stride[0], stride_w=op.stride[1], pad_t=op.pad[0], pad_l=op.pad[1],
            dil_h=op.dilation[0], dil_w=op.dilation[1], **common, **refs,
        )  # fmt: skip
        fn = lib.es_dwconv2d if isinstance(op, ir.DepthwiseConv2D) else lib.es_conv2d
        fn(ctypes.byref(pc), *args)
    tail = max(n_in, n_out) if inplace else n_out
    assert (buf[tail:].view(np.uint8) == CANARY).all(), "kernel wrote past its output"
    assert (scratch[scratch_n:] == CANARY).all(), "kernel wrote past its scratch"
    return buf[:n_out].reshape(case.out_shape).copy()


PATHS = ["portable", "dsp"]

CONV_SHAPES = [
    # in_shape, out_c, kernel, stride, pad, dilation
    ((49, 10, 1), 64, (10, 4), (2, 2), (4, 1, 5, 2), (1, 1)),  # KWS first conv
    ((5, 5, 64), 64, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),  # KWS pointwise
    ((7, 5, 3), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((9, 9, 3), 8, (3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),  # VWW first conv, TF "same" s2
    ((8, 7, 5), 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2)),  # dilation
    ((4, 4, 16), 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),  # ResNet 1x1 shortcut s2
    ((6, 6, 16), 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 5, 1), 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((5, 3, 7), 2, (2, 3), (1, 1), (1, 0, 0, 2), (1, 1)),
    ((1, 1, 6), 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # every tap but one in padding
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_conv2d_is_bit_exact(libs, path: str, shape) -> None:
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    case = make_case(rng, "conv", *shape[:1], *shape[1:])
    got = run_case(libs[path], case)
    want = case.expected()
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > min(20, want.size // 2)  # spread out, not a constant


DW_SHAPES = [
    ((25, 5, 64), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # KWS depthwise
    ((12, 12, 8), (3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),  # VWW s2 block
    ((7, 6, 5), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # 4 + 1 channels
    ((9, 8, 3), (5, 5), (1, 1), (2, 2, 2, 2), (2, 2)),  # 3 channels, dilation
    ((6, 5, 13), (3, 3), (1, 2), (0, 0, 0, 0), (1, 1)),
    ((4, 4, 1), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((6, 7, 12), (3, 2), (2, 1), (1, 0, 1, 1), (1, 1)),
    ((10, 10, 4), (9, 9), (1, 1), (4, 4, 4, 4), (1, 1)),  # 81 taps: past the stack table
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", DW_SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_depthwise_is_bit_exact(libs, path: str, shape) -> None:
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    case = make_case(rng, "dw", shape[0], 0, *shape[1:])
    np.testing.assert_array_equal(run_case(libs[path], case), case.expected())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [(640, 128), (64, 12), (5, 3), (1, 1), (7, 2), (130, 9)])
def test_fully_connected_is_bit_exact(libs, path: str, n: tuple[int, int]) -> None:
    case = make_case(np.random.default_rng(n[0] * 1000 + n[1]), "fc", (n[0],), n[1])
    np.testing.assert_array_equal(run_case(libs[path], case), case.expected())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["conv", "dw", "fc"])
def test_saturation_and_fused_activation(libs, path: str, kind: str) -> None:
    """A gain of 40 pushes most outputs past int8; a Relu6-like range clamps the rest."""
    rng = np.random.default_rng(7)
    shape = (12,) if kind == "fc" else (5, 4, 8)
    for gain, act in ((40.0, (-128, 127)), (1.0, (-20, 50)), (40.0, (-3, 3))):
        case = make_case(rng, kind, shape, 6, (3, 3), (1, 1), (1, 1, 1, 1), gain=gain, act=act)
        want = case.expected()
        assert ((want == act[0]) | (want == act[1])).mean() > 0.3
        np.testing.assert_array_equal(run_case(libs[path], case), want)


@pytest.mark.parametrize("path", PATHS)
def test_rounding_ties_go_to_even(libs, path: str) -> None:
    """mult = 0.5 and 0.25 put many products exactly halfway between integers."""
    rng = np.random.default_rng(11)
    for kind in ("conv", "dw", "fc"):
        shape = (24,) if kind == "fc" else (4, 5, 8)
        out_c = 64 if kind == "fc" else 8
        case = make_case(rng, kind, shape, out_c, (3, 3), (1, 1), (1, 1, 1, 1))
        op = case.op
        op.weights = rng.integers(-3, 4, op.weights.shape).astype(np.int8)
        op.bias = rng.integers(-50, 50, op.bias.shape).astype(np.int32)
        op.multiplier = np.where(np.arange(op.bias.size) % 2, 0.5, 0.25).astype(np.float32)
        case.out_zp = 3
        got, want = run_case(libs[path], case), case.expected()
        np.testing.assert_array_equal(got, want)
        # the case really has ties: half-up rounding would disagree somewhere
        f = _products(case)
        assert (np.abs(f - np.trunc(f)) == 0.5).sum() > 10


def _products(case: Case) -> np.ndarray:
    """acc * mult before rounding (the reference without its last two steps)."""
    op = case.op
    if isinstance(op, ir.FullyConnected):
        acc = op.weights.astype(np.int64) @ (case.x.astype(np.int64) - case.in_zp) + op.bias
        return acc.astype(np.float32) * op.multiplier
    depthwise = isinstance(op, ir.DepthwiseConv2D)
    kh, kw = op.weights.shape[:2] if depthwise else op.weights.shape[1:3]
    (pt, pl, pb, pr) = op.pad
    oh, ow = out_hw(op, case.x.shape[0], case.x.shape[1])
    xp = np.pad(case.x.astype(np.int64) - case.in_zp, ((pt, pb), (pl, pr), (0, 0)))
    acc = np.zeros((oh, ow, op.bias.size), np.int64) + op.bias
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[ky * op.dilation[0] :: op.stride[0]][
                :oh, kx * op.dilation[1] :: op.stride[1]
            ]
            patch = patch[:, :ow]
            if depthwise:
                acc += patch * op.weights[ky, kx].astype(np.int64)
            else:
                acc += patch @ op.weights[:, ky, kx, :].astype(np.int64).T
    return acc.astype(np.float32) * op.multiplier


@pytest.mark.parametrize("path", PATHS)
def test_inplace_where_kernel_specs_allows_it(libs, path: str) -> None:
    rng = np.random.default_rng(5)
    cases = [
        make_case(rng, "conv", (5, 5, 64), 64),  # pointwise, same width
        make_case(rng, "conv", (3, 7, 16), 5),  # pointwise, narrower
        make_case(rng, "conv", (1, 3, 5), 5),  # odd pixel count
        make_case(rng, "fc", (64,), 64),
        make_case(rng, "fc", (12,), 40),  # FC may also grow in place
    ]
    for case in cases:
        assert kernel_specs.inplace_ok(case.op, case.in_shape, case.out_shape)
        np.testing.assert_array_equal(run_case(libs[path], case, inplace=True), case.expected())


def test_inplace_refused_where_unsupported() -> None:
    rng = np.random.default_rng(6)
    wider = make_case(rng, "conv", (4, 4, 8), 16)
    three = make_case(rng, "conv", (4, 4, 8), 8, (3, 3), (1, 1), (1, 1, 1, 1))
    strided = make_case(rng, "conv", (4, 4, 8), 8, (1, 1), (2, 2))
    dw = make_case(rng, "dw", (4, 4, 8), 0, (3, 3), (1, 1), (1, 1, 1, 1))
    for case in (wider, three, strided, dw):
        assert not kernel_specs.inplace_ok(case.op, case.in_shape, case.out_shape)


def test_scratch_bytes_per_core() -> None:
    rng = np.random.default_rng(1)
    conv = make_case(rng, "conv", (49, 10, 1), 64, (10, 4), (2, 2), (4, 1, 5, 2))
    fc = make_case(rng, "fc", (65,), 12)
    dw = make_case(rng, "dw", (5, 5, 8), 0, (3, 3))
    # DSP/portable: three int16 columns of K = 40 (in_c = 1 packs through the third);
    # Helium: 64 int32 biases + two int8 columns
    assert kernel_specs.scratch_bytes(conv.op, conv.in_shape, conv.out_shape, "cortex-m4") == 240
    assert kernel_specs.scratch_bytes(conv.op, conv.in_shape, conv.out_shape, "cortex-m55") == (
        64 * 4 + 80
    )
    assert kernel_specs.scratch_bytes(fc.op, fc.in_shape, fc.out_shape, "cortex-m7") == 132
    assert kernel_specs.scratch_bytes(fc.op, fc.in_shape, fc.out_shape, "cortex-m55") == 68
    assert kernel_specs.scratch_bytes(dw.op, dw.in_shape, dw.out_shape, "cortex-m4") == 0


# --- the real Arm builds under QEMU -------------------------------------------------------


def _c_array(name: str, ctype: str, values: np.ndarray) -> str:
    flat = np.ascontiguousarray(values).reshape(-1)
    items = (
        [f"{float(v).hex()}f" for v in flat] if ctype == "float" else [str(int(v)) for v in flat]
    )
    return f"static const {ctype} {name}[] __attribute__((aligned(4))) = {{{', '.join(items)}}};"


def render_case(case: Case, i: int) -> tuple[str, str]:
    """C declarations of CASE's arrays and parameter struct, and the name of its kernel."""
    op = case.op
    decls = [
        _c_array(f"w{i}", "int8_t", op.weights),
        _c_array(f"b{i}", "int32_t", op.bias),
        _c_array(f"m{i}", "float", op.multiplier.astype(np.float32)),
    ]
    fields = dict(in_zp=case.in_zp, out_zp=case.out_zp, act_min=op.act_min, act_max=op.act_max)
    if isinstance(op, ir.FullyConnected):
        fields = dict(in_n=case.x.size, out_n=op.weights.shape[0], **fields)
        ctype, fn = "es_fc_t", "es_fc"
    else:
        depthwise = isinstance(op, ir.DepthwiseConv2D)
        kh, kw = op.weights.shape[:2] if depthwise else op.weights.shape[1:3]
        (ih, iw, ic), (oh, ow, oc) = case.in_shape, case.out_shape
        fields = dict(
            in_h=ih, in_w=iw, in_c=ic, out_h=oh, out_w=ow, out_c=oc, kh=kh, kw=kw,
            stride_h=op.stride[0], stride_w=op.stride[1], pad_t=op.pad[0], pad_l=op.pad[1],
            dil_h=op.dilation[0], dil_w=op.dilation[1], **fields,
        )  # fmt: skip
        ctype, fn = "es_conv_t", "es_dwconv2d" if depthwise else "es_conv2d"
    body = ", ".join(f".{k} = {v}" for k, v in fields.items())
    decls.append(
        f"static const {ctype} op{i} = {{{body}, .weights = w{i}, .bias = b{i}, .mult = m{i}}};"
    )
    return "\n".join(decls), fn


def write_model(cases: list[tuple[Case, bool]], core: str, out_dir: Path) -> None:
    """model.h / model.c running each (case, in_place) on its slice of the harness's input."""
    n_in = sum(c.x.size for c, _ in cases)
    n_out = sum(int(np.prod(c.out_shape)) for c, _ in cases)
    scratch = max(kernel_specs.scratch_bytes(c.op, c.in_shape, c.out_shape, core) for c, _ in cases)
    arena = max(max(c.x.size, int(np.prod(c.out_shape))) for c, inplace in cases if inplace)
    (out_dir / "model.h").write_text(
        f"#include <stdint.h>\n#define MODEL_INPUT_BYTES {n_in}\n"
        f"#define MODEL_OUTPUT_BYTES {n_out}\n"
        "int model_infer(const int8_t *in, int8_t *out);\n"
    )
    lines = ['#include <string.h>\n#include "es_conv.h"\n#include "model.h"']
    lines.append(f"static int32_t scratch[{(scratch + 3) // 4 + 1}];")
    lines.append(f"static int8_t arena[{arena}] __attribute__((aligned(8)));")
    calls, at_in, at_out = [], 0, 0
    for i, (case, inplace) in enumerate(cases):
        decls, fn = render_case(case, i)
        lines.append(decls)
        ni, no = case.x.size, int(np.prod(case.out_shape))
        if inplace:
            calls.append(f"memcpy(arena, in + {at_in}, {ni});")
            calls.append(f"{fn}(&op{i}, arena, arena, scratch);")
            calls.append(f"memcpy(out + {at_out}, arena, {no});")
        else:
            calls.append(f"{fn}(&op{i}, in + {at_in}, out + {at_out}, scratch);")
        at_in, at_out = at_in + ni, at_out + no
    lines.append("int model_infer(const int8_t *in, int8_t *out) {")
    lines += [f"    {c}" for c in calls] + ["    return 0;", "}"]
    (out_dir / "model.c").write_text("\n".join(lines) + "\n")


def qemu_cases() -> list[tuple[Case, bool]]:
    rng = np.random.default_rng(2026)
    return [
        (make_case(rng, "conv", (49, 10, 1), 64, (10, 4), (2, 2), (4, 1, 5, 2)), False),
        (make_case(rng, "conv", (5, 5, 64), 64), False),
        (make_case(rng, "conv", (5, 5, 64), 40), True),
        (make_case(rng, "conv", (7, 5, 3), 5, (3, 3), (2, 1), (1, 1, 1, 1)), False),
        (make_case(rng, "conv", (6, 6, 17), 3, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)), False),
        (make_case(rng, "dw", (25, 5, 64), 0, (3, 3), (1, 1), (1, 1, 1, 1)), False),
        (make_case(rng, "dw", (9, 9, 7), 0, (3, 3), (2, 2), (0, 0, 1, 1)), False),
        (make_case(rng, "fc", (640,), 128), False),
        (make_case(rng, "fc", (37,), 5), True),
        (make_case(rng, "conv", (4, 4, 8), 8, (3, 3), (1, 1), (1, 1, 1, 1), gain=40), False),
        (make_case(rng, "fc", (64,), 12, act=(-128, -20)), False),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("core", ["cortex-m4", "cortex-m55"])
def test_arm_builds_are_bit_exact_under_qemu(core: str, tmp_path: Path) -> None:
    """The DSP path (M4: real SXTB16/SMLAD, VCVTR) and Helium (M55: VMLADAVA) under QEMU."""
    from edgeshift.mcu.runner import build_firmware, run_firmware

    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        pytest.skip("the Arm cross toolchain or qemu-system-arm is not installed")
    cases = qemu_cases()
    write_model(cases, core, tmp_path)
    sources = [tmp_path / "model.c", *(KERNEL_DIR / s for s in SOURCES)]
    elf = build_firmware(sources, [tmp_path, KERNEL_DIR], core, tmp_path / "build")
    inputs = b"".join(c.x.tobytes() for c, _ in cases)
    n_out = sum(int(np.prod(c.out_shape)) for c, _ in cases)
    run = run_firmware(elf, core, inputs, output_bytes_per_sample=n_out, count_instructions=False)
    got = np.frombuffer(run.outputs, np.int8)
    np.testing.assert_array_equal(got, np.concatenate([c.expected().reshape(-1) for c, _ in cases]))
