from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import assert_one_line_error
from typer.testing import CliRunner

from edgeshift.cli.main import app

runner = CliRunner()


def test_bench_table(mlp_path: Path) -> None:
    result = runner.invoke(
        app, ["bench", str(mlp_path), "-n", "20", "--batch", "2", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "latency p99" in result.stdout and "items/s" in result.stdout
    assert "x=[2, 8]" in result.stdout


def test_bench_json_openvino(mlp_path: Path) -> None:
    result = runner.invoke(
        app, ["bench", str(mlp_path), "-b", "openvino", "-p", "fp32", "-n", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"] == "openvino" and data["precision"] == "fp32"
    assert data["iterations"] == 5
    assert data["p50_ms"] <= data["p99_ms"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "missing.onnx"], "model not found"),
        (["bench", "{model}", "--shape", "nope=3"], "no input or symbolic dim"),
        (["bench", "{model}", "--shape", "x=1xx8"], "bad --shape"),
        (["bench", "{model}", "-b", "tvm"], "unknown backend"),
        (["bench", "{model}", "--data", "{bad_npz}"], "no array 'x'"),
        (["bench", "{custom}", "-b", "onnxruntime"], "onnxruntime cannot load"),
        (["bench", "{notonnx}"], "not"),
        (["bench", "{truncated}"], "truncated|corrupt|not a valid"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    tmp_path: Path, mlp_path: Path, custom_op_path: Path, args: list[str], message: str
) -> None:
    np.savez(tmp_path / "bad.npz", wrong=np.zeros((2, 8), np.float32))
    (tmp_path / "notes.onnx").write_text("hello\n")
    data = mlp_path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    values = {
        "model": str(mlp_path),
        "bad_npz": str(tmp_path / "bad.npz"),
        "custom": str(custom_op_path),
        "notonnx": str(tmp_path / "notes.onnx"),
        "truncated": str(tmp_path / "cut.onnx"),
    }
    result = runner.invoke(app, [a.format(**values) for a in args] + ["-n", "1"])
    assert result.exit_code == 2
    line = assert_one_line_error(result)
    assert re.search(message, line), line


def test_console_script_runs_as_module(mlp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeshift", "bench", str(mlp_path), "-n", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["iterations"] == 3
