"""Example models with real trained weights and held-out eval data, for trying every verb.

``list_models()`` says what there is (and what an optional model needs); ``get(name, dest)``
writes ``model.onnx`` and ``eval.npz`` (one array per model input, plus int64 ``labels`` for
classifiers) into a directory.
"""

from edgeshift.zoo._registry import ZooEntry, ZooModel, get, list_models

__all__ = ["ZooEntry", "ZooModel", "get", "list_models"]
