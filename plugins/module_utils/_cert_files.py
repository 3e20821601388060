# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replacing certificate and key files on the managed host all together or not at all.

A server that loads a new key beside an old certificate (or the other way round) does not start,
so a renewal writes every file in full next to its destination first and renames them into place
only once all of them are written; a failed rename puts back the files already replaced.
"""

from __future__ import annotations

import os
import tempfile
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError

FileWrite = t.Tuple[str, bytes, t.Optional[int]]
"""``(path, content, mode)``; a mode of None keeps the mode of the file it replaces (0644 for a new one)."""


def unwritable(path: str) -> t.Optional[str]:
    """Why ``path`` cannot be replaced by a file written next to it (None when it can): its directory is
    missing, not a directory, read-only (also for root, on a read-only file system) or not writable, or
    ``path`` itself is a directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a directory"
    if not os.path.isdir(directory):
        return "its directory %s does not exist" % directory
    if not os.access(directory, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return "its directory %s is %s" % (directory, "on a read-only file system" if read_only else "not writable")
    return None


def _stage(path: str, data: bytes, mode: t.Optional[int]) -> str:
    """Write ``data`` to a new temporary file next to ``path`` (flushed to disk); returns its name."""
    directory = os.path.dirname(os.path.abspath(path))
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = 0o644
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".cert_renew.")
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp
    except OSError as exc:
        if tmp is not None:
            _unlink(tmp)
        raise RunbookError("cannot write %s: %s" % (path, exc.strerror or exc))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _old_contents(paths: t.Sequence[str]) -> t.List[t.Tuple[str, t.Optional[bytes], int]]:
    """What each destination holds now (None when absent), to put it back should a rename fail."""
    old: t.List[t.Tuple[str, t.Optional[bytes], int]] = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                old.append((path, handle.read(), os.stat(path).st_mode & 0o777))
        except OSError:
            old.append((path, None, 0))
    return old


def _put_back(old: t.Sequence[t.Tuple[str, t.Optional[bytes], int]]) -> t.List[str]:
    """Restore replaced files (newest first); the problems, when some could not be put back."""
    problems = []
    for old_path, content, old_mode in reversed(old):
        try:
            if content is None:
                os.unlink(old_path)
            else:
                os.replace(_stage(old_path, content, old_mode), old_path)
        except (OSError, RunbookError) as inner:
            problems.append("%s: %s" % (old_path, getattr(inner, "msg", None) or inner))
    return problems


def write_together(files: t.Sequence[FileWrite]) -> None:
    """Replace several files (a key and its certificate) so that a failure leaves them all as they were.

    Every new file is written in full next to its destination first; a failure there (read-only or
    full file system) removes them and changes nothing. Only then are they renamed into place, in
    order; should a rename fail, the files already replaced get their old content back.
    """
    staged: t.List[t.Tuple[str, str]] = []
    try:
        for path, data, mode in files:
            staged.append((path, _stage(path, data, mode)))
    except RunbookError as exc:
        for _path, tmp in staged:
            _unlink(tmp)
        raise RunbookError("%s; nothing was written" % exc.msg)
    old = _old_contents([path for path, _tmp in staged])
    for index, (path, tmp) in enumerate(staged):
        try:
            os.replace(tmp, path)
        except OSError as exc:
            for _path, later in staged[index:]:
                _unlink(later)
            problems = _put_back(old[:index])
            raise RunbookError("cannot write %s: %s; %s" % (
                path, exc.strerror or exc, "the files written before it were put back" if not problems else
                "putting back the files written before it failed too (%s)" % "; ".join(problems)))
