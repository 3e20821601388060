# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stored RDB written to a file on the managed host (the spool of a throwaway server, the data
directory of a file restore), with the file's own failures kept apart from the backup's.

A full, read-only or missing directory is a :class:`LocalError` naming the directory: it fails the
task, it never becomes a verdict on the backup (a full spool must not make a good backup look corrupt).
"""

from __future__ import annotations

import errno
import os
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._names import shown
from ansible_collections.runbook.ops.plugins.module_utils._rdb import StoredSnapshot
from ansible_collections.runbook.ops.plugins.module_utils._stream import GuardedWriter


class LocalError(RunbookError):
    """A problem of the managed host (a full or read-only spool or data directory, no redis-server), not of
    the backup: it fails the task instead of becoming a verification problem, so a good backup is never
    called bad because the place it was unpacked into could not take it."""


_DIRECTORY_STATES = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its disk quota", errno.EROFS: "is read-only",
                     errno.EACCES: "is not writable", errno.EPERM: "is not writable",
                     errno.ENOTDIR: "is not a directory", errno.ENOENT: "does not exist",
                     errno.EFBIG: "does not take a file this large"}
_OUT_OF_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def directory_problem(role: str, directory: str, exc: BaseException, doing: str) -> LocalError:
    """``the spool directory /x is full (writing ... failed: No space left on device)``."""
    code = getattr(exc, "errno", None)
    state = _DIRECTORY_STATES.get(code, "could not be used") if isinstance(code, int) else "could not be used"
    cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return LocalError("the %s %s %s (%s failed: %s)" % (role, shown(directory, 200), state, doing, cause))


class LocalFile(GuardedWriter):
    """A 0600 file created under ``directory`` (``role`` names it in messages, e.g. "spool directory"),
    written as the last stage of a read from the repository. As a :class:`GuardedWriter` it remembers
    the write error, so that a full or read-only file system is reported as the directory's fault."""

    def __init__(self, path: str, directory: str, role: str, needed: int = 0) -> None:
        super().__init__(None)
        self.path = path
        self.directory = directory
        self.role = role
        self.needed = needed
        self.written = 0

    def open(self) -> "LocalFile":
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise directory_problem(self.role, self.directory, exc, "creating %s" % self.path)
        self.destination = os.fdopen(fd, "wb")
        return self

    def write(self, data: t.Any) -> int:
        count = super().write(data)
        self.written += count
        return count

    def directory_failure(self) -> LocalError:
        """The remembered write error, as the directory's fault (with the room the file needs)."""
        exc = self.error or OSError("write failed")
        problem = directory_problem(self.role, self.directory, exc,
                                    "writing %s after %d bytes" % (self.path, self.written))
        if self.needed and getattr(exc, "errno", None) in _OUT_OF_ROOM:
            problem.msg += "; the file needs %d bytes there" % self.needed
            problem.args = (problem.msg,)
        return problem

    def finish(self) -> None:
        """Flush, fsync and close: a delayed ENOSPC (network file systems) surfaces here."""
        try:
            self.destination.flush()
            os.fsync(self.destination.fileno())
            self.destination.close()
        except OSError as exc:
            self.error = self.error or exc
            self.abort()
            raise self.directory_failure()
        self.destination = None

    def abort(self) -> None:
        if self.destination is not None:
            try:
                self.destination.close()
            except OSError:
                pass
            self.destination = None


def read_into_file(snapshot: StoredSnapshot, target: LocalFile, sink: t.Optional[t.Any] = None) -> None:
    """Stream the snapshot's RDB into ``target`` (through ``sink``, which writes to it, when given). A
    failure of the file is a :class:`LocalError`; a failure of the stored bytes stays what it is."""
    try:
        snapshot.read_into(sink if sink is not None else target)
    except RunbookError as exc:
        target.abort()
        # Bytes that differ from the manifest are the backup's fault whatever else went wrong.
        if target.error is not None and getattr(exc, "stage", None) != "checksum":
            raise target.directory_failure() from None
        raise
    except OSError:
        target.abort()
        if target.error is not None:
            raise target.directory_failure() from None
        raise
    target.finish()


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
