"""The extractor finds what a reader would run, and only that."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.doccmd import extract, output_matches


def _extract(tmp_path: Path, text: str) -> list[tuple[int, str]]:
    (tmp_path / "doc.md").write_text(text)
    return [(c.line, c.text) for c in extract(tmp_path / "doc.md", tmp_path)]


def test_bash_blocks_run_every_line_but_comments(tmp_path: Path) -> None:
    doc = "intro\n\n```bash\n# set up\nedgeshift zoo list\n\nedgeshift inspect m.onnx  # why\n```\n"
    assert _extract(tmp_path, doc) == [
        (5, "edgeshift zoo list"),
        (7, "edgeshift inspect m.onnx  # why"),
    ]


def test_console_blocks_run_prompt_lines_and_keep_output(tmp_path: Path) -> None:
    doc = "```console\n$ edgeshift zoo list\ndigits-cnn  classification\n$ curl -s x\n```\n"
    (tmp_path / "doc.md").write_text("<!-- doc-test: compare -->\n" + doc)
    cmds = extract(tmp_path / "doc.md", tmp_path)
    assert [(c.line, c.text, c.expected) for c in cmds] == [
        (3, "edgeshift zoo list", ("digits-cnn  classification",)),
        (5, "curl -s x", ()),
    ]


def test_unmarked_blocks_prompts_commands_synopses_and_diagrams(tmp_path: Path) -> None:
    doc = (
        "```\n$ edgeshift zoo get digits-cnn ./cnn\ndigits-cnn (classification)\n```\n"
        "```\nedgeshift plan SCENARIO.yaml [--out DIR] [--json]\n```\n"
        "```\npython benchmarks/plan.py     # solve time\n```\n"
        "```\n operator ── CLI ──▶ edgeshift fleet serve\n   edgeshift agent\n```\n"
        "```\nfits: 24.0 KiB of 192.0 KiB RAM\n```\n"
        "```text\nedgeshift zoo list\n```\n"
    )
    assert _extract(tmp_path, doc) == [
        (2, "edgeshift zoo get digits-cnn ./cnn"),
        (9, "python benchmarks/plan.py     # solve time"),
    ]


def test_continuations_quotes_and_heredocs_make_one_command(tmp_path: Path) -> None:
    doc = (
        "```bash\n"
        "edgeshift serve m.onnx \\\n    --port 8001\n"
        "curl -s x -d '{\"a\":\n    1}'\n"
        "cat > f.py <<'EOF'\nprint('hi')\nEOF\n"
        "echo it's done  # no: the quote is unclosed on purpose\n"
        "```\n"
    )
    lines = [line for line, _ in _extract(tmp_path, doc)[:3]]
    assert lines == [2, 4, 6]
    texts = [text for _, text in _extract(tmp_path, doc)[:3]]
    assert texts == [
        "edgeshift serve m.onnx \\\n    --port 8001",
        "curl -s x -d '{\"a\":\n    1}'",
        "cat > f.py <<'EOF'\nprint('hi')\nEOF",
    ]


def test_servers_and_ampersands_run_in_the_background(tmp_path: Path) -> None:
    doc = (
        "```bash\n"
        "edgeshift serve m.onnx --port 8123\n"
        "edgeshift fleet serve --data-dir d &   # control plane\n"
        "edgeshift agent --server http://127.0.0.1:8600 --data-dir a --port 8011 &\n"
        "sleep 100 &\n"
        "edgeshift serve --help | head -1\n"
        "edgeshift fleet rollout list\n"
        "```\n"
    )
    (tmp_path / "doc.md").write_text(doc)
    cmds = extract(tmp_path / "doc.md", tmp_path)
    assert [c.background for c in cmds] == [True, True, True, True, True, False]
    assert [c.server for c in cmds[:4]] == [
        (8123, "/v2/health/ready", False),
        (8600, "/healthz", False),
        (8011, "/v2/health/live", False),
        None,
    ]
    assert cmds[1].foreground_text == "edgeshift fleet serve --data-dir d"


def test_skip_markers_need_a_reason(tmp_path: Path) -> None:
    ok = "<!-- doc-test: skip — needs a Jetson; or any Orin -->\n```bash\nedgeshift bench m.onnx\n```\n"
    (tmp_path / "doc.md").write_text(ok)
    assert [c.skip for c in extract(tmp_path / "doc.md", tmp_path)] == [
        "needs a Jetson; or any Orin"
    ]
    (tmp_path / "doc.md").write_text(ok.replace(" — needs a Jetson; or any Orin", ""))
    with pytest.raises(ValueError, match="doc.md:2: a doc-test: skip marker needs a reason"):
        extract(tmp_path / "doc.md", tmp_path)


def test_compared_output_allows_ellipses_and_nothing_else() -> None:
    assert (
        output_matches(("published digits-v1 (… bytes)",), "published digits-v1 (5 bytes)\n")
        is None
    )
    assert (
        output_matches(("a", "b"), "a\n") == "the doc shows 2 output line(s), the command printed 1"
    )
    assert "the doc shows 'x...'" in (output_matches(("x...",), "y") or "")


def test_exit_markers_expect_an_error(tmp_path: Path) -> None:
    doc = (
        "<!-- doc-test: exit 2; compare -->\n```\n$ edgeshift inspect m.onnx --shape seq=0\n"
        "error: seq=0 …\n```\n```bash\nedgeshift zoo list\n```\n"
    )
    (tmp_path / "doc.md").write_text(doc)
    cmds = extract(tmp_path / "doc.md", tmp_path)
    assert [(c.exit_code, c.expected) for c in cmds] == [(2, ("error: seq=0 …",)), (0, None)]
    (tmp_path / "doc.md").write_text(doc.replace("exit 2", "exit two"))
    with pytest.raises(ValueError, match="exit takes a number"):
        extract(tmp_path / "doc.md", tmp_path)
