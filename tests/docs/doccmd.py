"""Extract the shell commands a reader would copy from README.md and docs/*.md.

What counts as a command, as the docs are written:

- fenced blocks marked ``bash``, ``sh``, ``shell`` or ``zsh``: every line that is not blank
  and not a ``#`` comment (a ``$ `` prompt, if any, is dropped);
- fenced blocks marked ``console`` or ``shell-session``, and unmarked blocks with ``$ ``
  prompt lines: the prompt lines only; the other lines are output;
- unmarked blocks without prompts whose every line starts with a program a reader runs
  (``edgeshift``, ``python``, ``curl``, ``ray`` …) and that are not a synopsis (no ``[--``
  option brackets). Other unmarked blocks are diagrams, synopses or output; ``text`` blocks
  never hold commands.

A command continues on the next line after a trailing backslash or an unclosed quote, and a
``<<'EOF'`` here-document runs to its terminator. A command that ends with ``&``, or that
starts a long-running server (``edgeshift serve``, ``fleet serve``, ``agent``, ``cluster
serve``), runs in the background.

Markers, an HTML comment on the line(s) just before a block's fence:
``<!-- doc-test: skip — REASON -->`` (the block cannot run here; the reason is required),
``<!-- doc-test: compare -->`` (a console block's shown output must match: ``…`` or ``...``
in a shown line matches any text; stdout, or stderr for a command that fails on purpose) and
``<!-- doc-test: exit N -->`` (the block's commands show an error: each must exit with N).
Several markers may share one comment: ``<!-- doc-test: exit 2; compare -->``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

SHELL_LANGS = frozenset({"bash", "sh", "shell", "zsh"})
SESSION_LANGS = frozenset({"console", "shell-session"})
# The first words of lines a reader runs as they are; an unmarked block is commands only when
# every line starts with one of these.
PROGRAMS = frozenset(
    {"edgeshift", "python", "python3", "pip", "curl", "ray", "export", "open", "cd", "sudo"}
    | {"apt-get", "openssl", "echo", "cat", "mkdir", "until", "jq", "."}
)
# Commands that serve until stopped: (argv prefix, default port, readiness path).
SERVERS = (
    (("edgeshift", "fleet", "serve"), 8600, "/healthz"),
    (("edgeshift", "cluster", "serve"), 8000, "/v2/health/ready"),
    (("edgeshift", "serve"), 8000, "/v2/health/ready"),
    (("edgeshift", "agent"), 8000, "/v2/health/live"),
)

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
_MARKER = re.compile(
    r"(skip|compare|exit)\b\s*[—:-]*\s*(.*?)\s*(?:;\s*(?=(?:skip|compare|exit)\b)|$)"
)
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


@dataclass(frozen=True)
class DocCommand:
    doc: str  # path relative to the repository root
    line: int  # 1-based line of the command's first line
    text: str  # the shell text, continuation lines included
    skip: str | None = None  # the reason given by a doc-test: skip marker
    expected: tuple[str, ...] | None = None  # shown output, for blocks marked compare
    block: int = 0  # 1-based line of the block's opening fence
    exit_code: int = 0  # what the command must exit with (an error shown on purpose)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def background(self) -> bool:
        return _strip_comment(self.text).endswith("&") or self.server is not None

    @property
    def server(self) -> tuple[int, str, bool] | None:
        """(port, readiness path, tls) when the command starts a long-running server."""
        words = _words(self.text)
        for prefix, default_port, path in SERVERS:
            if tuple(words[: len(prefix)]) == prefix:
                port = default_port
                if "--port" in words and words.index("--port") + 1 < len(words):
                    port = int(words[words.index("--port") + 1])
                return port, path, "--tls-cert" in words
        return None

    @property
    def foreground_text(self) -> str:
        """The command without its trailing ``&`` (the runner backgrounds it)."""
        text = _strip_comment(self.text)
        return text[:-1].rstrip() if text.endswith("&") else self.text


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError:
        return text.split()


def _strip_comment(text: str) -> str:
    """The text up to its first ``# comment`` outside quotes: a command's trailing comment."""
    last = text.rstrip()
    in_single = in_double = False
    prev = " "
    for i, ch in enumerate(last):
        if ch == "'" and not in_double:
            in_single = not in_single
        elif ch == '"' and not in_single:
            in_double = not in_double
        elif ch == "#" and not in_single and not in_double and prev.isspace():
            return last[:i].rstrip()
        prev = ch
    return last


def _complete(text: str) -> bool:
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an unclosed quote: the command goes on
        return False
    return True


def _block_markers(lines: list[str], fence_index: int) -> dict[str, str]:
    """Markers in the comment lines just above the fence (blank lines allowed between)."""
    found: dict[str, str] = {}
    i = fence_index - 1
    while i >= 0 and (not lines[i].strip() or lines[i].lstrip().startswith("<!--")):
        comment = re.search(r"<!--\s*doc-test:(.*?)-->", lines[i])
        for kind, reason in _MARKER.findall(comment.group(1).strip() if comment else ""):
            found[kind] = reason
        i -= 1
    return found


def _is_command_line(line: str) -> bool:
    words = line.split()
    return bool(words) and (words[0] in PROGRAMS or ("=" in words[0] and words[0][0].isupper()))


def _block_kind(lang: str, body: list[str]) -> str | None:
    """'script' (every line), 'session' ($ lines) or None (no commands)."""
    if lang in SHELL_LANGS:
        return "script"
    if lang in SESSION_LANGS:
        return "session"
    if lang:
        return None
    if any(line.startswith("$ ") for line in body):
        return "session"
    code = [line for line in body if line.strip() and not line.lstrip().startswith("#")]
    starts = [line for line in code if not line[0].isspace()]  # indented: continuations
    synopsis = any("[-" in line for line in code)  # `verb ARG [--opt X]`
    if starts and code[0] is starts[0] and all(_is_command_line(line) for line in starts):
        return None if synopsis else "script"
    return None


def _commands(kind: str, body: list[str], first_line: int) -> list[tuple[int, str, list[str]]]:
    """(line, text, output lines after it) for each command of one block."""
    out: list[tuple[int, str, list[str]]] = []
    i = 0
    while i < len(body):
        raw = body[i]
        stripped = raw.strip()
        prompt = raw.startswith("$ ")
        if kind == "session" and not prompt:
            if out:
                out[-1][2].append(raw)
            i += 1
            continue
        if not stripped or (stripped.startswith("#") and not prompt):
            i += 1
            continue
        start = i
        text = raw[2:] if prompt else raw
        while not _complete(text) and i + 1 < len(body):
            i += 1
            nxt = body[i][2:] if body[i].startswith("> ") else body[i]
            text = text + "\n" + nxt
        heredoc = _HEREDOC.search(text)
        if heredoc:
            end = heredoc.group(1)
            while i + 1 < len(body):
                i += 1
                text += "\n" + body[i]
                if body[i].strip() == end:
                    break
        out.append((first_line + start, text.rstrip(), []))
        i += 1
    return out


def extract(path: Path, root: Path) -> list[DocCommand]:
    """Every command of one Markdown file, in document order."""
    lines = path.read_text(encoding="utf-8").split("\n")
    doc = path.relative_to(root).as_posix()
    found: list[DocCommand] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(ticks):
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        kind = _block_kind(lang.lower(), body)
        if kind is not None:
            markers = _block_markers(lines, i)
            if "skip" in markers and not markers["skip"]:
                raise ValueError(f"{doc}:{i + 1}: a doc-test: skip marker needs a reason")
            if not markers.get("exit", "0").isdigit():
                raise ValueError(f"{doc}:{i + 1}: doc-test: exit takes a number, e.g. exit 2")
            exit_code = int(markers.get("exit", "0"))
            for line, text, output in _commands(kind, body, i + 2):
                expected = tuple(output) if "compare" in markers else None
                found.append(
                    DocCommand(doc, line, text, markers.get("skip"), expected, i + 1, exit_code)
                )
        i = end + 1
    return found


def output_matches(expected: tuple[str, ...], actual: str) -> str | None:
    """None when ACTUAL shows the EXPECTED lines (… and ... match any text), else why not."""
    got = [line.rstrip() for line in actual.rstrip("\n").split("\n")] if actual.strip() else []
    want = [line.rstrip() for line in expected if line.strip()]
    if len(got) != len(want):
        return f"the doc shows {len(want)} output line(s), the command printed {len(got)}"
    for shown, printed in zip(want, got, strict=True):
        parts = re.split(r"…|\.\.\.", shown)
        pattern = ".*".join(re.escape(part) for part in parts)
        if not re.fullmatch(pattern, printed):
            return f"the doc shows {shown!r}, the command printed {printed!r}"
    return None


def doc_paths(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]
