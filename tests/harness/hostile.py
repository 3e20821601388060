"""Shared checks for the hostile-input suite (``tests/integration/hostile/``).

Every hostile input must end in a clear ``fail_json``: failed, a message, no "unexpected" exception,
no traceback, no secret anywhere in what the module printed, and nothing written outside the place
the test allowed.
"""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

# Values that are hostile as names: traversal, separators, libpq connection-string syntax, quotes,
# shell syntax (there is no shell, but they must stay literal), NUL and other control bytes, length.
TRAVERSAL = ["../outside", "..", ".", "a/../../b", "..\\x", "/etc/passwd"]
CONNINFO = ["host=127.0.0.1 port=1 dbname=x", "dbname=other_db", "postgresql://evil@127.0.0.1:1/x",
            "postgres://127.0.0.1/x"]
CONTROL = ["with\x00nul", "line\nbreak", "tab\there"]
TOO_LONG = ["x" * 300]


def assert_clean_failure(result: t.Mapping[str, t.Any], *, secrets: t.Sequence[str] = (),
                         mentions: t.Sequence[str] = ()) -> str:
    """The module failed with a message of its own; returns the message for further checks."""
    text = json.dumps(result, default=str) + getattr(result, "stderr", "")
    assert result.get("failed"), "expected a failure, got %s" % text[:2000]
    msg = result.get("msg") or ""
    assert msg, "failed without a message: %s" % text[:2000]
    assert "unexpected" not in msg.lower(), msg
    assert "Traceback" not in text, text[:4000]
    assert "module printed no JSON" not in msg, text[:4000]
    for secret in secrets:
        assert secret not in text, "secret %r leaked into the output" % secret
    for word in mentions:
        assert word.lower() in msg.lower(), "%r not in message %r" % (word, msg)
    return msg


def assert_no_secret(text: str, secrets: t.Sequence[str]) -> None:
    for secret in secrets:
        assert secret not in text, "secret %r leaked" % secret


def tree_snapshot(root: t.Union[str, Path]) -> t.Dict[str, t.Tuple[int, float]]:
    """Every file and directory below ``root`` with size and mtime, to prove nothing changed there."""
    root = Path(root)
    seen: t.Dict[str, t.Tuple[int, float]] = {}
    if not root.exists():
        return seen
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            seen[str(path.relative_to(root))] = (info.st_size, info.st_mtime)
    return seen
