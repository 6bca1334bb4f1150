"""Optimize: the fastest variant of a model that stays inside its accuracy budget.

:func:`optimize` searches runtimes x precisions x quantization recipes, scores every candidate
on held-out data, keeps quantized layers in float where they cost accuracy, times the
survivors side by side and writes the winner as an artifact directory (model + manifest.json).
"""

from edgeshift.optimize.manifest import CandidateRecord, Manifest, read_manifest
from edgeshift.optimize.result import OptimizeResult
from edgeshift.optimize.search import optimize

__all__ = ["CandidateRecord", "Manifest", "OptimizeResult", "optimize", "read_manifest"]
