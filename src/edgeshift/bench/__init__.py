"""The measurement harness: inputs (synthesized or from .npz) and timed runs."""

from edgeshift.bench.harness import BenchResult, bench, measure
from edgeshift.bench.inputs import index_ranges, load_npz, load_npz_batches, synthesize_inputs

__all__ = [
    "BenchResult",
    "bench",
    "index_ranges",
    "load_npz",
    "load_npz_batches",
    "measure",
    "synthesize_inputs",
]
