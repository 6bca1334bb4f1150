"""runtime.graph_facts: the facts a served model needs from its graph are the same whether
this process reads them or a child process does (the agent's way: it never imports onnx)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeshift import zoo
from edgeshift.errors import ModelError
from edgeshift.runtime.graph_facts import (
    compute_graph_facts,
    graph_facts,
    graph_facts_in_child,
)


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo.get("digits-cnn", tmp_path_factory.mktemp("zoo")).model_path


def test_child_and_in_process_agree_on_a_cnn(digits_cnn: Path) -> None:
    here = compute_graph_facts(digits_cnn)
    assert here.activation_ratio == 64.0  # the memory plan's figure (test_runtime_memory)
    assert here.index_bounds == {}
    assert graph_facts_in_child(digits_cnn) == here


def test_child_and_in_process_agree_on_token_ids(embedding_path: Path) -> None:
    here = compute_graph_facts(embedding_path)
    assert here.index_bounds == {"input_ids": 10}  # the Gather's table has 10 rows
    assert graph_facts_in_child(embedding_path) == here


def test_an_artifact_directory_reads_its_model_file(tmp_path: Path, mlp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(mlp_path.read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps({"model_file": "model.onnx"}))
    assert graph_facts(tmp_path) == compute_graph_facts(mlp_path)


def test_a_corrupt_file_gets_the_graph_readers_advice_from_the_child(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07not an onnx model" * 8)
    with pytest.raises(ModelError, match="corrupt or not an ONNX model; re-export"):
        graph_facts_in_child(bad)


def test_a_rewritten_file_is_read_again(
    tmp_path: Path, mlp_path: Path, embedding_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(mlp_path.read_bytes())
    assert graph_facts(path).index_bounds == {}
    path.write_bytes(embedding_path.read_bytes())  # an A/B slot gets a new model in place
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse-clock filesystem
    assert graph_facts(path).index_bounds == {"input_ids": 10}
