"""Assertions shared by the CLI tests of every verb."""

from __future__ import annotations

from typing import Any


def assert_one_line_error(result: Any, *fragments: str) -> str:
    """A user error: non-zero exit, exactly one ``error: …`` line on stderr, no traceback,
    and every fragment in that line. Returns the line."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def invoke_cli(*args: object) -> Any:
    """Run ``edgeshift ARGS…`` in-process (typer's CliRunner); arguments are str()-ed."""
    from typer.testing import CliRunner

    from edgeshift.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_json(*args: object) -> Any:
    """``edgeshift ARGS… --json`` that must succeed: its parsed stdout."""
    import json

    result = invoke_cli(*args)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)
