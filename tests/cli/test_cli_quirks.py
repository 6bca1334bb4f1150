"""inspect and bench from the command line on exporter quirks and out-of-range shapes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import assert_one_line_error, invoke_cli
from tests.model import quirk_models as q


def test_inspect_negative_dims_at_a_batch(tmp_path: Path) -> None:
    path = q.save(q.negative_dims_mlp(), tmp_path, "paddle")
    result = invoke_cli("inspect", path, "--json", "--batch", "4")
    assert result.exit_code == 0, result.output + result.stderr
    doc = json.loads(result.stdout)
    assert doc["macs"] == 4 * 8 * 4
    assert doc["inputs"][0]["shape"] == [None, 8]


def test_inspect_huge_shape_fails_fast_in_one_line(tmp_path: Path) -> None:
    path = q.save(q.position_table_model(), tmp_path, "emb")
    result = invoke_cli("inspect", path, "--shape", "seq=99999999999")
    assert_one_line_error(result, "seq=99999999999 is too large", "--shape")


def test_inspect_past_position_table(tmp_path: Path) -> None:
    path = q.save(q.position_table_model(), tmp_path, "emb")
    result = invoke_cli("inspect", path, "--shape", "seq=1000", "--no-load-check")
    assert_one_line_error(result, "seq=1000", f"at most {q.POSITIONS}")


def test_bench_symbolic_shape_on_openvino(tmp_path: Path) -> None:
    path = q.save(q.symbolic_seq_model(), tmp_path, "block")
    result = invoke_cli(
        "bench", path, "--shape", "seq=17", "--backend", "openvino", "-n", "2", "--json"
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["input_shapes"] == {"x": [1, 17, 8]}


def test_bench_huge_dim_in_one_line(tmp_path: Path) -> None:
    path = q.save(q.position_table_model(), tmp_path, "emb")
    result = invoke_cli("bench", path, "--shape", f"seq={2**40}", "-n", "2")
    assert_one_line_error(result, f"seq={2**40} is too large")


def test_bench_two_outputs(tmp_path: Path) -> None:
    path = q.save(q.two_outputs_model(), tmp_path, "heads")
    result = invoke_cli("bench", path, "-n", "2", "--json")
    assert result.exit_code == 0, result.output + result.stderr
