"""Microbenchmarks behind the host calibration: small ONNX graphs on the real runtimes.

Every kernel class the roofline knows (``roofline.KERNEL_CLASSES``) is timed at a few
sizes on each runtime and precision the host has: ONNX Runtime fp32 and int8 (QDQ),
OpenVINO fp32, bf16 (when the CPU has it) and int8 (from the same QDQ graphs). Sessions
are opened once; each *round* then times every benchmark briefly, in alternating order.

The kernel classes run on ONE thread and are timed by this process's CPU time
(:func:`single_thread_time`): a neighbour taking one of two cores slows a two-thread kernel
by anything up to 2x from call to call, and pre-empts a one-thread kernel without adding to
its CPU time. How much more threads give is measured apart, once per class at its largest size
(``par_<class>`` benchmarks at the host's threads), and the figure the estimate reads is
``single-thread GOP/s x that speed-up`` (:func:`edgeshift.targets._cal_derive.threaded`).
Dispatch chains and memory benchmarks run at the host's threads, as models do.

A figure is a low quantile (``QUANTILE``) of all of a benchmark's calls over all rounds:
a busy neighbour only ever adds time, so the low end is what the host can do, and a
quantile moves less than the single fastest call between calibrations. A figure whose two
best rounds disagree by more than ``CONFIRM_SPREAD`` is re-measured on its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeshift.errors import BackendError
from edgeshift.runtime import open_backend
from edgeshift.targets import _cal_graphs as graphs
from edgeshift.targets.roofline import CONV_WIDTH_POSITIONS, PARALLEL_MIN_BYTES
from edgeshift.targets.schema import Calibration

# (runtime, precision as estimates name it, the graphs' kind, precision the runtime runs at)
# The int8 graphs are QDQ: ONNX Runtime runs them as stored; OpenVINO's float ops around
# its int8 kernels run at bf16 where the CPU has it, as the nncf recipe records.
CONFIGS = (
    ("onnxruntime", "fp32", "float", "fp32"),
    ("onnxruntime", "int8", "int8", "fp32"),
    ("openvino", "fp32", "float", "fp32"),
    ("openvino", "bf16", "float", "bf16"),
    ("openvino", "int8", "int8", "bf16"),
)
# Sizes: what MobileNet/ResNet-like, speech and transformer models exercise at batch 1.
# Each conv class is timed as a stack of CONV_STACK equal convs (C in = C out): inside a
# network a runtime reorders a tensor's layout (planar <-> blocked) at the graph's edges
# only; a lone conv pays both reorders on every call (OpenVINO's 32-channel 28x28 conv ran
# at ~150 GOP/s alone and ~260 inside seg-unet, profiled with PERF_COUNT).
CONV_STACK = 4
CONV = {  # class -> (C in, C out, kernel, groups, output sides)
    "conv_dense": (32, 32, 3, 1, (8, 28, 56)),
    "conv_depthwise": (64, 64, 3, 64, (14, 28, 56)),
    "conv_pointwise": (64, 64, 1, 1, (7, 28, 56)),
}
# Width: stacks of WIDTH_STACK 3x3 dense Convs with C -> C channels, each with the same MACs
# as the 32-channel curve's 28x28 conv (C = 8 at 112x112, 128 at 7x7): narrow convs fill few
# SIMD lanes, wide ones reach more of peak. Equal work keeps a narrow conv's figure off the
# dispatch; a stack keeps it off the layout reorders a runtime does at a graph's edges (for
# 8 channels at 112x112 those cost as much as the conv). Measured on ONE thread; the
# estimate reads it as a factor over its 32-channel figure.
CONV_WIDTHS, WIDTH_STACK = tuple(CONV_WIDTH_POSITIONS), CONV_STACK


def width_side(width: int) -> int:
    """The output side of the ``conv_width`` graph of WIDTH channels (equal MACs)."""
    return math.isqrt(CONV_WIDTH_POSITIONS[width])


GEMM_K, GEMM_N, GEMM_ROWS = 384, 1536, (1, 8, 32, 128, 512)  # a transformer FFN projection
GEMM_STACK = 4  # MatMuls per GEMM graph (two FFNs: up, down, up, down), as CONV_STACK
# int8 GEMMs whose output stays float (``gemm_float_out``: MatMul -> bias Add) at these rows
ATTN_HEADS, ATTN_DIM, ATTN_SEQ = 4, 32, (32, 128)
RNN_IN, RNN_HIDDEN, LSTM_SEQ, GRU_SEQ = 64, 128, (8, 32), (16,)
NORM_OPS, NORM_ROWS, NORM_WIDTH = 8, 128, 384
CHAIN_LENGTHS = (1, 17, 33)  # dispatch: t(n) = call + n * op, least squares over n
CHAIN_WIDTH = 16

PASSES = 6  # rounds of a full calibration...
MAX_PASSES = 10  # ...and more, up to this many, while it has run less than PASS_BUDGET_S
PASS_BUDGET_S = 50.0
EXTRA_ROUNDS = 6  # at most this many re-measures of the figures not confirmed...
BUDGET_S = 90.0  # ...and none once a full calibration has run this long
CONFIRM_SPREAD = 0.03  # two fastest rounds further apart than this: re-measure the figure
NOISY_SPREAD = 0.10  # still further apart after re-measuring: the calibration is "noisy"
ROUND_S = 0.012  # time per benchmark per round (at least MIN_CALLS calls)
MIN_CALLS, MAX_CALLS = 3, 400
QUANTILE = 0.2  # a figure is this quantile of all calls (0: the fastest call)
# Classes whose thread speed-up is measured (at their largest size) on every runtime.
SCALED_CLASSES = ("conv_dense", "conv_depthwise", "conv_pointwise", "gemm", "gemm_float_out",
                  "attention", "lstm", "gru", "norm")  # fmt: skip


def more_rounds(
    seconds: float, open_s: float, passes: int, budget_s: float = PASS_BUDGET_S
) -> bool:
    """Whether one more full round (as long as the average round so far, opening the
    sessions not counted) still ends within BUDGET_S of SECONDS run: a quiet host gets more
    rounds, a busy one keeps its time for re-measuring."""
    return passes > 0 and seconds + (seconds - open_s) / passes <= budget_s


def single_thread_time(wall_s: float, cpu_s: float) -> float:
    """A one-thread call's time: the CPU time this process spent on it, or the wall time
    when that is less. A neighbour that takes the core away mid-call adds wall time but no
    CPU time; CPU time above the wall time (another thread of ours still spinning) is not
    the kernel's."""
    return min(wall_s, cpu_s) if cpu_s > 0 else wall_s


def low_quantile(times: list[float], q: float = QUANTILE) -> float:
    """The Q quantile of TIMES (Q <= 0: the minimum); linear between order statistics."""
    if not times:
        raise ValueError("no times to take a quantile of")
    if q <= 0:
        return float(min(times))
    return float(np.quantile(np.asarray(times, float), min(q, 1.0)))


def fit_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (x, y), each point weighted by
    1 / y^2 (relative errors: a short chain's time counts as much as a long one's)."""
    w = np.array([1 / max(v, 1e-12) ** 2 for v in y])
    a = np.stack([np.ones(len(x)), np.array(x, float)], axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(a * sw[:, None], np.array(y, float) * sw, rcond=None)
    return float(coef[0]), float(coef[1])


def round_spread(round_mins: list[float]) -> float | None:
    """How far the second-fastest round is above the fastest (None: fewer than two rounds)."""
    fastest = sorted(round_mins)[:2]
    if len(fastest) < 2 or fastest[0] <= 0:
        return None
    return fastest[1] / fastest[0] - 1


def corrected_peak(flag_peak: float, achieved: float) -> float:
    """FLAG_PEAK doubled until ACHIEVED is at most 90% of it (0 peak: achieved / 0.9)."""
    if flag_peak <= 0:
        return achieved / 0.9
    peak = flag_peak
    while achieved > 0.9 * peak:
        peak *= 2
    return peak


def width_factor(flag_peaks: dict[str, float], achieved: dict[str, float]) -> float:
    """How many times wider the vector units are than the flags said (1, 2, 4, ...): one
    factor for every precision, since they share the same units."""
    factor = 1.0
    for p, gops in achieved.items():
        flag = flag_peaks.get(p, 0.0)
        if flag > 0:
            factor = max(factor, corrected_peak(flag, gops) / flag)
    return factor


def fit_saturation(r1: float, a1: float, r2: float, a2: float) -> tuple[float, float]:
    """(max, half_rows) of ``a(r) = max * r / (r + half_rows)`` through two points, r1 < r2
    (the version-6 layout's GEMM/Conv model; pinned files of that layout still use it)."""
    denom = a1 / r1 - a2 / r2
    if a2 <= a1 or denom <= 0:  # no growth with size: flat at the larger figure
        return max(a1, a2), 0.0
    half = (a2 - a1) / denom
    return a2 * (r2 + half) / r2, half


@dataclass
class Bench:
    """One microbenchmark: a graph on one runtime, timed a little in every round."""

    key: str  # "<runtime>/<precision>/<what>/<size>" or a memory benchmark's name
    path: Path
    feed: dict[str, np.ndarray]
    backend: str
    runtime_precision: str
    threads: int | None = None  # None: the host's usable CPUs
    session: Any = None
    calls: list[float] = field(default_factory=list)  # every timed call of every round, s

    def time_round(self, budget_s: float, q: float = QUANTILE) -> float:
        """A few calls (two untimed first: the previous benchmark's worker threads may
        still be spinning); returns this round's Q quantile."""
        run, feed = self.session.run, self.feed
        run(feed)
        run(feed)
        times: list[float] = []
        end = time.perf_counter() + budget_s
        cpu = time.process_time if self.threads == 1 else None
        while len(times) < MIN_CALLS or (len(times) < MAX_CALLS and time.perf_counter() < end):
            if cpu is None:
                t0 = time.perf_counter()
                run(feed)
                times.append(time.perf_counter() - t0)
                continue
            t0, c0 = time.perf_counter(), cpu()
            run(feed)
            c1, t1 = cpu(), time.perf_counter()
            times.append(single_thread_time(t1 - t0, c1 - c0))
        self.calls.extend(times)
        return low_quantile(times, q)


class Calibrator:
    """Opens every microbenchmark once, runs measurement rounds (:meth:`run_pass`), and turns
    the fastest times into a :class:`Calibration` (:meth:`result`). Rounds can be spread
    over time (the accuracy benchmark interleaves them with its own runs)."""

    def __init__(
        self,
        host: object,
        peak_fn: Callable[[str], float | None],
        quick: bool = False,
        q: float = QUANTILE,
    ):
        from edgeshift.targets.host import HostInfo

        assert isinstance(host, HostInfo)
        self.host = host
        self.peak_fn = peak_fn
        self.quick = quick
        self.q = q
        self.round_s = ROUND_S / 3 if quick else ROUND_S
        self.big = (16 << 20) if quick else (64 << 20)  # bytes per tensor, well past any LLC
        self.small = 256 << 10  # bytes per tensor that stay in L2 on anything that has one
        self.mid = PARALLEL_MIN_BYTES  # big enough for a runtime to split an op over threads
        self.benches: list[Bench] = []
        self.per_pass: dict[str, list[float]] = {}  # benchmark -> each round's quantile
        self.calls: dict[str, list[float]] = {}  # benchmark -> every call of every round
        self.copy_times: list[float] = []
        self.rss: list[int] = []
        self.usable: list[tuple[str, str]] = []  # (runtime, precision) that opened
        self.passes = 0
        self.seconds = 0.0
        self.open_s = 0.0  # of which opening the sessions
        self.rng = np.random.default_rng(0)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeshift-cal-")
        self._dir = Path(self._tmp.name)
        self._opened = False

    def __enter__(self) -> Calibrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for b in self.benches:
            if b.session is not None:
                with contextlib.suppress(Exception):
                    b.session.close()
                b.session = None
        self._tmp.cleanup()

    @property
    def best(self) -> dict[str, float]:
        """Each benchmark's figure: the ``q`` quantile of all its calls, seconds."""
        return self.figures_at(self.q)

    def figures_at(self, q: float) -> dict[str, float]:
        """The Q quantile of every benchmark's calls over all rounds (0: the fastest; below
        0: the best round's own ``self.q`` quantile instead of pooling the calls). The
        speed-up runs ("par_") always take their best round: on all CPUs by wall time, they
        are only as fast as the host lets them be when no neighbour wants a core, and
        pooling calls over busy rounds would average the neighbours in."""
        out = {}
        for key, rounds in self.per_pass.items():
            pool = self.calls.get(key) or rounds
            if not pool:
                continue
            best_round = bool(rounds) and (q < 0 or (q > 0 and "/par_" in key))
            out[key] = min(rounds) if best_round else low_quantile(pool, q)
        return out

    def noisy(self, threshold: float = NOISY_SPREAD) -> dict[str, float]:
        """Benchmarks whose two best rounds disagree by more than THRESHOLD: the figure
        kept is not confirmed, so a neighbour may have slowed every round."""
        out = {}
        for key, times in self.per_pass.items():
            spread = round_spread(times)
            if spread is not None and spread > threshold:
                out[key] = spread
        return out

    # --- the benchmarks -------------------------------------------------------------------

    def _graph(self, name: str, build: Callable[..., Path], *args: Any) -> Path:
        path = self._dir / f"{name}.onnx"
        return path if path.exists() else build(path, *args)

    def _float(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(np.float32)

    def _uint8(self, *shape: int) -> np.ndarray:
        return self.rng.integers(0, 255, shape, dtype=np.uint8)

    def _specs(self, kind: str) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
        """(what/size, graph, feed) of every benchmark of graphs of KIND (float or int8)."""
        int8 = kind == "int8"
        make = self._uint8 if int8 else self._float
        out = []
        for cls, (cin, _, k, groups, sides) in CONV.items():
            for hw in sides[:: 2 if self.quick else 1]:
                g = self._graph(f"{cls}{hw}{kind}", graphs.conv_stack, CONV_STACK, cin, hw, int8,
                                k, groups)  # fmt: skip
                out.append((f"{cls}/{hw * hw}", g, {"x": make(1, cin, hw, hw)}))
        for width in CONV_WIDTHS[:: 2 if self.quick else 1]:
            side = width_side(width)
            g = self._graph(f"convw{width}{kind}", graphs.conv_stack, WIDTH_STACK, width, side,
                            int8)  # fmt: skip
            out.append((f"conv_width/{width}", g, {"x": make(1, width, side, side)}))
        for m in GEMM_ROWS[:: 3 if self.quick else 1]:
            g = self._graph(f"gemm{m}{kind}", graphs.gemm, m, GEMM_K, GEMM_N, int8, False,
                            GEMM_STACK)  # fmt: skip
            out.append((f"gemm/{m}", g, {"x": make(m, GEMM_K)}))
        if int8:
            for m in GEMM_ROWS[1 :: 3 if self.quick else 2]:  # 8 and 128
                g = self._graph(f"gemmf{m}", graphs.gemm, m, GEMM_K, GEMM_N, True, True,
                                GEMM_STACK)  # fmt: skip
                out.append((f"gemm_float_out/{m}", g, {"x": make(1, m, GEMM_K)}))
            return out
        h, d = ATTN_HEADS, ATTN_DIM
        for s in ATTN_SEQ:
            g = self._graph(f"attn{s}", graphs.attention, h, s, d)
            feed = {"q": make(1, h, s, d), "kt": make(1, h, d, s), "v": make(1, h, s, d)}
            out.append((f"attention/{h * s * s * d}", g, feed))
        for op, seqs in (("LSTM", LSTM_SEQ), ("GRU", GRU_SEQ)):
            for s in seqs:
                g = self._graph(f"{op}{s}", graphs.recurrent, op, s, RNN_IN, RNN_HIDDEN)
                out.append((f"{op.lower()}/{s}", g, {"x": make(s, 1, RNN_IN)}))
        g = self._graph("norm", graphs.norm_chain, NORM_OPS, NORM_ROWS, NORM_WIDTH)
        out.append((f"norm/{NORM_ROWS * NORM_WIDTH}", g, {"x": make(1, NORM_ROWS, NORM_WIDTH)}))
        for n in CHAIN_LENGTHS:
            g = self._graph(f"mm_chain{n}", graphs.matmul_chain, n, CHAIN_WIDTH)
            out.append((f"chain/{n}", g, {"x": make(1, CHAIN_WIDTH)}))
            g = self._graph(f"conv_chain{n}", graphs.conv_chain, n)
            out.append((f"conv_chain/{n}", g, {"x": make(1, 8, 4, 4)}))
        return out

    def _memory_specs(self) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
        out = []
        for name, n_ops, nbytes in (("ew_big", 1, self.big), ("ew_small", 16, self.small),
                                    ("ew_mid", 16, self.mid)):  # fmt: skip
            g = self._graph(name, graphs.elementwise_chain, n_ops, nbytes // 4)
            out.append((name, g, {"x": np.ones((1, nbytes // 4), np.float32)}))
        return out

    def _with_threads(
        self, specs: list[tuple[str, Path, dict[str, np.ndarray]]]
    ) -> list[tuple[str, Path, dict[str, np.ndarray], int | None]]:
        """Kernel classes at one thread, plus each scaled class's largest size again at the
        host's threads as "par_<class>/<size>"; dispatch chains at the host's threads (the
        dispatch figures) and again on one thread as "1t_chain/<n>" (what the one-thread
        class figures are net of)."""
        out: list[tuple[str, Path, dict[str, np.ndarray], int | None]] = []
        largest: dict[str, tuple[int, Path, dict[str, np.ndarray]]] = {}
        for what, path, feed in specs:
            cls, _, size = what.rpartition("/")
            if cls in ("chain", "conv_chain"):
                out.append((what, path, feed, None))
                out.append((f"1t_{what}", path, feed, 1))
                continue
            out.append((what, path, feed, 1))
            if cls in SCALED_CLASSES and int(size) >= largest.get(cls, (-1,))[0]:
                largest[cls] = (int(size), path, feed)
        if self.host.usable_cores > 1:
            for cls, (rows, path, feed) in largest.items():
                out.append((f"par_{cls}/{rows}", path, feed, None))
        return out

    def _open(self) -> None:
        """Open every benchmark's session (the runtimes' graph compilation happens here).
        The runtime's RAM (``rss``) is this process before calibrating plus what loading a
        runtime and opening its first, smallest session added: one model's runtime, not the
        ~180 calibration sessions held open together."""
        rss_before = psutil.Process().memory_info().rss
        for runtime, precision, kind, rt_precision in CONFIGS:
            specs = self._specs(kind)
            rss_config = psutil.Process().memory_info().rss
            try:  # the first graph tells whether this runtime runs this precision here
                first = open_backend(specs[0][1], backend=runtime, precision=rt_precision)
            except BackendError:
                if kind == "float" or rt_precision == "fp32":
                    continue
                rt_precision = "fp32"  # OpenVINO int8 on a CPU without bf16
                try:
                    first = open_backend(specs[0][1], backend=runtime, precision=rt_precision)
                except BackendError:
                    continue
            added = psutil.Process().memory_info().rss - rss_config
            self.rss.append(rss_before + max(added, 0))
            with contextlib.suppress(Exception):
                first.close()
            self.usable.append((runtime, precision))
            for what, path, feed, threads in self._with_threads(specs):
                b = Bench(f"{runtime}/{precision}/{what}", path, feed, runtime, rt_precision,
                          threads)  # fmt: skip
                try:
                    b.session = open_backend(path, runtime, rt_precision, threads=threads)
                except BackendError:
                    continue  # a class this runtime cannot run here: the roofline falls back
                self.benches.append(b)
        for key, path, feed in self._memory_specs():
            b = Bench(key, path, feed, "onnxruntime", "fp32")
            b.session = open_backend(path, "onnxruntime", "fp32")
            self.benches.append(b)
        self._opened = True

    def _copy_s(self) -> float:
        src = np.ones(2 * self.big // 4, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t0)
        return best

    def run_pass(self, progress: bool = False, only: set[str] | None = None) -> None:
        """One round over every benchmark (or those in ONLY): a few calls each, in the
        opposite order to the round before so no benchmark always follows the same one."""
        t0 = time.perf_counter()
        if not self._opened:
            self._open()
            self.open_s = time.perf_counter() - t0
        order = [b for b in self.benches if only is None or b.key in only]
        if self.passes % 2:
            order.reverse()
        bar_ctx: Any = contextlib.nullcontext()
        if progress:
            from rich.progress import Progress

            from edgeshift.cli.render import err_console

            bar_ctx = Progress(console=err_console, transient=True)
        with bar_ctx as bar:
            task = bar.add_task("calibrating host", total=len(order)) if progress else None
            for b in order:
                self.per_pass.setdefault(b.key, []).append(b.time_round(self.round_s, self.q))
                self.calls[b.key] = b.calls
                if bar is not None and task is not None:
                    bar.update(task, advance=1, description=f"calibrating: {b.key}")
            if only is None or "copy" in only:
                self.per_pass.setdefault("copy", []).append(self._copy_s())
        if only is None:
            self.passes += 1
        self.seconds += time.perf_counter() - t0

    def remeasure(
        self, rounds: int = EXTRA_ROUNDS, spread: float = CONFIRM_SPREAD, deadline: float = math.inf
    ) -> int:
        """Extra rounds over the benchmarks whose two fastest rounds differ by more than
        SPREAD, until each is confirmed, ROUNDS are spent or ``time.perf_counter()`` passes
        DEADLINE; returns the rounds run."""
        for i in range(rounds):
            unconfirmed = set(self.noisy(spread))
            if not unconfirmed or time.perf_counter() >= deadline:
                return i
            self.run_pass(only=unconfirmed)
        return rounds

    def result(self, q: float | None = None) -> Calibration:
        """The calibration from the calls so far, at quantile Q (default: ``self.q``)."""
        from edgeshift.targets._cal_derive import derive

        return derive(self, self.q if q is None else q)


def run_calibration(
    host: object,
    *,
    peak_fn: Callable[[str], float | None],
    quick: bool = False,
    progress: bool = False,
) -> Calibration:
    """Measure this host (``PASSES`` rounds, more while they fit in ``PASS_BUDGET_S``, then
    re-measures within ``BUDGET_S``; one round when QUICK) and return the calibration."""
    return run_calibration_checked(host, peak_fn=peak_fn, quick=quick, progress=progress)[0]


def run_calibration_checked(
    host: object,
    *,
    peak_fn: Callable[[str], float | None],
    quick: bool = False,
    progress: bool = False,
) -> tuple[Calibration, dict[str, float]]:
    """The calibration and its noisy benchmarks (name -> spread between its two best
    rounds after re-measuring; "other processes" -> the share of this process's CPUs that
    other processes used meanwhile)."""
    cal, noisy, _ = run_calibration_compared(host, peak_fn=peak_fn, quick=quick,
                                             progress=progress)  # fmt: skip
    return cal, noisy


def run_calibration_compared(
    host: object,
    *,
    peak_fn: Callable[[str], float | None],
    quick: bool = False,
    progress: bool = False,
    also_q: tuple[float, ...] = (),
) -> tuple[Calibration, dict[str, float], dict[float, Calibration]]:
    """As :func:`run_calibration_checked`, plus the calibration the same calls give at each
    quantile of ALSO_Q (benchmarks/calibration_stability.py compares statistics this way)."""
    cpus = _own_cpus()
    busy_before, own_before, t0 = _busy_s(cpus), _own_cpu_s(), time.perf_counter()
    passes = 1 if quick else PASSES
    with Calibrator(host, peak_fn, quick=quick) as cal:
        for _ in range(passes):
            cal.run_pass(progress)
        while not quick and passes < MAX_PASSES and more_rounds(cal.seconds, cal.open_s, passes):
            cal.run_pass(progress)
            passes += 1
        if not quick:
            cal.remeasure(deadline=t0 + BUDGET_S)
        noisy = cal.noisy()
        wall_s = time.perf_counter() - t0
        others_s = _busy_s(cpus) - busy_before - (_own_cpu_s() - own_before)
        share = others_s / (wall_s * len(cpus)) if cpus and wall_s > 0 else 0.0
        if share > OTHERS_BUSY_SHARE:
            noisy["other processes"] = share
        update = {"passes": passes, "noisy": {k: round(float(v), 4) for k, v in noisy.items()}}
        alts = {q: cal.result(q).model_copy(update=update) for q in also_q}
        return cal.result().model_copy(update=update), noisy, alts


# Other processes using more than this share of our CPUs during calibration slow every round
# alike, which the spread between rounds cannot show.
OTHERS_BUSY_SHARE = 0.15


def _own_cpus() -> list[int]:
    try:
        return sorted(psutil.Process().cpu_affinity() or [])
    except (AttributeError, psutil.Error):
        return []


def _busy_s(cpus: list[int]) -> float:
    per_cpu = psutil.cpu_times(percpu=True)
    return sum(
        t.user + t.system + getattr(t, "nice", 0.0) for i, t in enumerate(per_cpu) if i in cpus
    )


def _own_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
