"""Fixtures for the optimize tests: the builders live in optimize_models.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from optimize_models import hot_pixel_cnn, hot_pixel_data, save_model

from edgeshift import zoo


@pytest.fixture
def hot_cnn(tmp_path: Path) -> tuple[Path, Path]:
    model = save_model(hot_pixel_cnn(), tmp_path / "hot_cnn.onnx")
    data = tmp_path / "hot_cnn.npz"
    np.savez(data, **hot_pixel_data())
    return model, data


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory) -> zoo.ZooModel:
    return zoo.get("digits-mlp", tmp_path_factory.mktemp("digits-mlp"))


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> zoo.ZooModel:
    return zoo.get("digits-cnn", tmp_path_factory.mktemp("digits-cnn"))
