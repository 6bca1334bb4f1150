"""es_misc.c, built with the host gcc, against the numpy golden ops on random and edge cases."""

from __future__ import annotations

import ctypes as C
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeshift.mcu import ir
from edgeshift.mcu.reference import (
    add_params,
    global_avgpool_scale,
    run_reference,
    softmax_table,
    softmax_y_scale,
)

KERNELS = Path(__file__).parents[2] / "src" / "edgeshift" / "mcu" / "kernels"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the host gcc")


class Pool(C.Structure):
    _fields_ = [
        *[(n, C.c_uint16) for n in ("in_h", "in_w", "channels", "out_h", "out_w", "kernel_h",
                                     "kernel_w", "stride_h", "stride_w", "pad_top", "pad_left")],
        ("kind", C.c_uint8), ("count_include_pad", C.c_uint8),
        ("in_zp", C.c_int32), ("out_zp", C.c_int32),
        ("in_scale", C.c_float), ("out_scale", C.c_float), ("global_scale", C.c_float),
    ]  # fmt: skip


class AddP(C.Structure):
    _fields_ = [("size", C.c_uint32), ("ratio_a", C.c_float), ("ratio_b", C.c_float),
                ("fixed", C.c_float), ("act_min", C.c_int32), ("act_max", C.c_int32)]  # fmt: skip


class SoftmaxP(C.Structure):
    _fields_ = [("rows", C.c_uint16), ("length", C.c_uint16), ("table", C.POINTER(C.c_float)),
                ("y_scale", C.c_float), ("y_zp", C.c_int32)]  # fmt: skip


class PadP(C.Structure):
    _fields_ = [*[(n, C.c_uint16) for n in ("in_h", "in_w", "channels", "pad_top", "pad_left",
                                             "pad_bottom", "pad_right")],
                ("zero_point", C.c_int8)]  # fmt: skip


class ConcatP(C.Structure):
    _fields_ = [("n_inputs", C.c_uint16), ("pixels", C.c_uint32),
                ("channels", C.POINTER(C.c_uint16)), ("in_scale", C.POINTER(C.c_float)),
                ("in_zp", C.POINTER(C.c_int32)), ("out_scale", C.c_float), ("out_zp", C.c_int32)]  # fmt: skip


class ClampP(C.Structure):
    _fields_ = [("size", C.c_uint32), ("act_min", C.c_int8), ("act_max", C.c_int8)]


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> C.CDLL:
    out = tmp_path_factory.mktemp("esmisc") / "libesmisc.so"
    cmd = ["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
           "-o", str(out), str(KERNELS / "es_misc.c"), "-lm"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return C.CDLL(str(out))


def _ptr(a: np.ndarray) -> C.c_void_p:
    return C.c_void_p(a.ctypes.data)


def _graph(tensors: list[ir.QTensor], op: ir.Op, inputs: list[str]) -> ir.McuGraph:
    return ir.McuGraph("t", {t.name: t for t in tensors}, [op], inputs, [op.out])


RNG = np.random.default_rng(7)


def _i8(*shape: int) -> np.ndarray:
    return RNG.integers(-128, 128, size=shape, dtype=np.int8)


@pytest.mark.parametrize(
    "h,w,c,k,s,pad,include",
    [
        (5, 5, 3, (5, 5), (1, 1), (0, 0, 0, 0), False),  # global
        (7, 6, 4, (3, 3), (2, 2), (1, 1, 1, 1), False),  # windowed, padded edges
        (7, 6, 4, (3, 2), (1, 2), (1, 0, 1, 1), True),  # count_include_pad
    ],
)
def test_avgpool_matches_golden(lib: C.CDLL, h, w, c, k, s, pad, include) -> None:  # type: ignore[no-untyped-def]
    oh = (h + pad[0] + pad[2] - k[0]) // s[0] + 1
    ow = (w + pad[1] + pad[3] - k[1]) // s[1] + 1
    for x_scale, y_scale, xz, yz in [(0.05, 0.04, -3, 5), (0.1, 0.01, 100, -128)]:  # 2nd saturates
        xq = ir.QTensor("x", (h, w, c), x_scale, xz)
        yq = ir.QTensor("y", (oh, ow, c), y_scale, yz)
        op = ir.Pool2D("avg", "x", "y", k, s, pad, include)
        g = _graph([xq, yq], op, ["x"])
        x = _i8(h, w, c)
        want = run_reference(g, [x])[0]
        is_global = k == (h, w) and not any(pad)
        p = Pool(h, w, c, oh, ow, k[0], k[1], s[0], s[1], pad[0], pad[1], int(is_global),
                 int(include), xz, yz, x_scale, y_scale,
                 global_avgpool_scale(x_scale, y_scale, k[0] * k[1]))  # fmt: skip
        got = np.zeros_like(want)
        lib.es_avgpool(C.byref(p), _ptr(x), _ptr(got))
        np.testing.assert_array_equal(got, want)


def test_maxpool_with_padding_matches_golden(lib: C.CDLL) -> None:
    h, w, c = 6, 5, 3
    xq, yq = ir.QTensor("x", (h, w, c), 0.1, 0), ir.QTensor("y", (3, 3, c), 0.1, 0)
    g = _graph([xq, yq], ir.Pool2D("max", "x", "y", (3, 3), (2, 2), (1, 1, 1, 1)), ["x"])
    x = _i8(h, w, c)
    x[0, 0, :] = -128  # a corner window whose real values are all the minimum
    want = run_reference(g, [x])[0]
    p = Pool(h, w, c, 3, 3, 3, 3, 2, 2, 1, 1, 2, 0, 0, 0, 0.1, 0.1, 0.0)
    got = np.zeros_like(want)
    lib.es_maxpool(C.byref(p), _ptr(x), _ptr(got))
    np.testing.assert_array_equal(got, want)


def test_add_matches_golden_including_saturation_and_relu(lib: C.CDLL) -> None:
    n = 4096
    for sa, za, sb, zb, sc, zc, lo in [
        (0.05, 3, 0.11, -7, 0.09, -2, -128),
        (0.5, 0, 0.5, 0, 0.01, 0, -128),  # saturates both ways
        (0.02, -128, 0.03, 10, 0.04, -20, -20),  # fused Relu
        (0.25, 0, 0.25, 0, 0.5, 0, -128),  # exact .5 ties: round half to even
    ]:
        a, b, c = (ir.QTensor(nm, (n,), s, z) for nm, s, z in
                   (("a", sa, za), ("b", sb, zb), ("c", sc, zc)))  # fmt: skip
        g = _graph([a, b, c], ir.Add("a", "b", "c", act_min=lo), ["a", "b"])
        xa, xb = _i8(n), _i8(n)
        want = run_reference(g, [xa, xb])[0]
        ra, rb, fixed = add_params(a, b, c)
        p = AddP(n, ra, rb, fixed, lo, 127)
        got = np.zeros_like(want)
        lib.es_add(C.byref(p), _ptr(xa), _ptr(xb), _ptr(got))
        np.testing.assert_array_equal(got, want)


def test_softmax_matches_golden_including_one_hot_rows(lib: C.CDLL) -> None:
    rows, d = 300, 12
    x = _i8(rows, d)
    x[:5] = -128
    x[:5, 3] = 127  # one class dominates: 256 + zp saturates to 127
    x[5:8] = 17  # all equal
    for x_scale, y_scale, yz in [(0.14, 1 / 256, -128), (0.02, 1 / 256, -128), (0.5, 0.01, -50)]:
        xq, yq = ir.QTensor("x", (d,), x_scale, 14), ir.QTensor("y", (d,), y_scale, yz)
        g = _graph([xq, yq], ir.Softmax("x", "y"), ["x"])
        want = run_reference(g, [x])[0]
        table = softmax_table(x_scale, d)
        p = SoftmaxP(rows, d, table.ctypes.data_as(C.POINTER(C.c_float)),
                     softmax_y_scale(y_scale), yz)  # fmt: skip
        got = np.zeros_like(want)
        lib.es_softmax(C.byref(p), _ptr(x), _ptr(got))
        np.testing.assert_array_equal(got, want)
        if x_scale == 0.14:  # a one-hot row gives 256 + zp, which ORT saturates to 127
            assert (want[:5, 3] == 127).all()


def test_pad_matches_golden(lib: C.CDLL) -> None:
    h, w, c, pad = 4, 3, 5, (1, 2, 0, 3)
    oh, ow = h + pad[0] + pad[2], w + pad[1] + pad[3]
    xq, yq = ir.QTensor("x", (h, w, c), 0.1, -9), ir.QTensor("y", (oh, ow, c), 0.1, -9)
    g = _graph([xq, yq], ir.Pad("x", "y", pad), ["x"])
    x = _i8(h, w, c)
    want = run_reference(g, [x])[0]
    assert (want[0] == -9).all() and (want[:, :2] == -9).all()
    p = PadP(h, w, c, *pad, -9)
    got = np.zeros_like(want)
    lib.es_pad(C.byref(p), _ptr(x), _ptr(got))
    np.testing.assert_array_equal(got, want)


def test_concat_with_requantized_input_matches_golden(lib: C.CDLL) -> None:
    h, w = 3, 4
    qs = [ir.QTensor("a", (h, w, 3), 0.1, 0), ir.QTensor("b", (h, w, 5), 0.37, -20)]
    yq = ir.QTensor("y", (h, w, 8), 0.1, 0)
    g = _graph([*qs, yq], ir.Concat(["a", "b"], "y"), ["a", "b"])
    xs = [_i8(h, w, 3), _i8(h, w, 5)]
    want = run_reference(g, xs)[0]
    chans = (C.c_uint16 * 2)(3, 5)
    scales = (C.c_float * 2)(0.1, 0.37)
    zps = (C.c_int32 * 2)(0, -20)
    p = ConcatP(2, h * w, chans, scales, zps, 0.1, 0)
    ins = (C.c_void_p * 2)(xs[0].ctypes.data, xs[1].ctypes.data)
    got = np.zeros_like(want)
    lib.es_concat(C.byref(p), ins, _ptr(got))
    np.testing.assert_array_equal(got, want)
    assert (want == 127).any()  # the 0.37-scale input saturates somewhere


def test_clamp_matches_golden(lib: C.CDLL) -> None:
    xq, yq = ir.QTensor("x", (100,), 0.1, 0), ir.QTensor("y", (100,), 0.1, 0)
    g = _graph([xq, yq], ir.Clamp("x", "y", -5, 60), ["x"])
    x = _i8(100)
    want = run_reference(g, [x])[0]
    got = np.zeros_like(want)
    lib.es_clamp(C.byref(ClampP(100, -5, 60)), _ptr(x), _ptr(got))
    np.testing.assert_array_equal(got, want)
    assert want.min() == -5 and want.max() == 60
