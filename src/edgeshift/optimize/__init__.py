"""Optimize: the fastest variant of a model that stays inside its accuracy budget.

:func:`optimize` searches runtimes x precisions x quantization recipes, scores every candidate
on held-out data, keeps quantized layers in float where they cost accuracy, times the
survivors side by side and writes the winner as an artifact directory (model + manifest.json).

The package itself is callable, so ``edgeshift.optimize(model, data, ...)`` is
:func:`optimize` while ``edgeshift.optimize.search`` and friends stay importable.
"""

import sys
import types
from typing import Any

from edgeshift.optimize.manifest import CandidateRecord, Manifest, read_manifest
from edgeshift.optimize.result import OptimizeResult
from edgeshift.optimize.search import optimize

__all__ = ["CandidateRecord", "Manifest", "OptimizeResult", "optimize", "read_manifest"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> OptimizeResult:
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
