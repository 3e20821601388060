# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stored PostgreSQL backup read back (:class:`StoredBackup`): found in the repository, its bytes
checked, its archive read by ``pg_restore`` into ``/dev/null``, restored into a database, and
that database's row counts compared with the manifest.

The stored object is checked, decrypted and decompressed on the fly into ``pg_restore``'s
standard input (one job, custom format), or spooled first into a private 0700 directory
(:class:`Spool`; ``jobs`` > 1 or the directory format), because ``pg_restore`` reads a directory
archive by file and cannot run in parallel from a pipe.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._pg_catalog import compare_counts, count_rows, list_tables
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import PgConnection
from ansible_collections.runbook.ops.plugins.module_utils._pg_tools import (
    ClientEnv, RestoreFlags, find_binary, restore_argv, run_tool)
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import (
    NullSink, SubprocessSink, decode_stream, load_identities)

KIND = "postgresql"
CUSTOM_OBJECT = "database.dump"
Manifest = t.Dict[str, t.Any]


class Spool:
    """A private 0700 directory under ``spool_dir`` (default: the system temp dir), removed at the end."""

    def __init__(self, spool_dir: t.Optional[str], purpose: str) -> None:
        base = spool_dir or tempfile.gettempdir()
        try:
            os.makedirs(base, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix="runbook-pg-%s-" % purpose, dir=base)
        except OSError as exc:
            raise RunbookError("spool_dir %s: cannot create a working directory: %s" % (base, exc.strerror or exc))
        os.chmod(self.path, 0o700)

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class _FileSink:
    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.handle = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        self.handle.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.handle.close()


class StoredBackup:
    """One complete pg_backup backup in ``repo``; ``identity`` is the ``encryption_identity`` option,
    read only when the backup's bytes must be decrypted."""

    def __init__(self, repo: Repository, manifest: Manifest, identity: t.Optional[str],
                 spool_dir: t.Optional[str]) -> None:
        self.repo = repo
        self.manifest = manifest
        self.identity = identity
        self.spool_dir = spool_dir
        self._identities: t.Optional[t.List[t.Any]] = None

    @classmethod
    def find(cls, repo: Repository, *, set_name: str, backup_id: t.Optional[str], identity: t.Optional[str],
             spool_dir: t.Optional[str]) -> "StoredBackup":
        """``backup_id`` of the set (the latest complete one when empty); a clear error when there is none."""
        manifest = repo.get(KIND, set_name, backup_id)
        if manifest.get("kind") != KIND:
            raise RunbookError("backup %s is a %s backup, not postgresql" % (manifest.get("id"), manifest.get("kind")))
        return cls(repo, manifest, identity, spool_dir)

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def format(self) -> str:
        return str(self.manifest.get("format", "custom"))

    @property
    def source(self) -> t.Dict[str, t.Any]:
        """What the manifest says about the dumped database (encoding, locale, owner, pg_dump version)."""
        return dict(self.manifest.get("source", {}))

    @property
    def row_counts(self) -> t.Dict[str, int]:
        return dict(self.manifest.get("postgresql", {}).get("row_counts") or {})

    def identities(self) -> t.List[t.Any]:
        """The age identities that decrypt the backup (loaded once); required when it is encrypted."""
        if self._identities is None:
            identities = load_identities(self.identity)
            if self.manifest.get("encryption", {}).get("algorithm", "none") != "none" and not identities:
                raise RunbookError("backup %s of set %s is encrypted: encryption_identity is required to read it"
                                   % (self.id, self.manifest.get("set")))
            self._identities = identities
        return self._identities

    def _custom_entry(self) -> t.Dict[str, t.Any]:
        for entry in self.manifest.get("objects", []):
            if entry["name"] == CUSTOM_OBJECT:
                return dict(entry)
        raise RunbookError("backup %s has no %s object; it is not a pg_backup custom-format backup"
                           % (self.id, CUSTOM_OBJECT))

    # ------------------------------------------------------------------ checks of the stored bytes

    def checksum_problems(self) -> t.List[str]:
        """Stored bytes against the manifest (size and sha256), without decrypting."""
        problems = []
        for entry in self.manifest.get("objects", []):
            try:
                reader = self.repo.backend.open_reader(self.repo.object_key(self.manifest, entry["name"]))
                try:
                    decode_stream(reader, NullSink(), "none", encrypted=False, expected_sha256=entry.get("sha256"),
                                  expected_size=entry.get("size"), object_name=entry["name"])
                finally:
                    reader.close()
            except RunbookError as exc:
                problems.append(exc.msg if entry["name"] in exc.msg else "%s: %s" % (entry["name"], exc.msg))
        return problems

    def stream_problems(self) -> t.List[str]:
        """Every object read to the end: size, sha256, decryption and decompression."""
        return list(self.repo.verify(self.manifest, self.identities())["problems"])

    # ------------------------------------------------------------------ pg_restore

    def pg_restore_for(self, server: PgConnection, server_major: int) -> str:
        """A pg_restore for this server that can read this backup (not older than the pg_dump that wrote it)."""
        path, version = find_binary("pg_restore", server_major, server.where)
        dumped = self.source.get("pg_dump_version")
        if dumped and version[0] < int(str(dumped).split(".", maxsplit=1)[0]):
            raise RunbookError("pg_restore %d.%d (%s) cannot read backup %s, written by pg_dump %s; install a "
                               "newer PostgreSQL client" % (version[0], version[1], path, self.id, dumped))
        return path

    def _spool(self, spool: Spool) -> str:
        """Decode every object into the spool directory (checked against the manifest); the archive's path."""
        for entry in self.manifest.get("objects", []):
            sink = _FileSink(os.path.join(spool.path, entry["name"]))
            try:
                self.repo.read_object(self.manifest, entry, sink, self.identities())
            finally:
                sink.close()
        return spool.path if self.format == "directory" else os.path.join(spool.path, CUSTOM_OBJECT)

    def _stream_into(self, argv: t.List[str], env: t.Optional[t.Dict[str, str]]) -> None:
        sink = SubprocessSink(argv, env=env, name="pg_restore")
        try:
            self.repo.read_object(self.manifest, self._custom_entry(), sink, self.identities())
        except BaseException:
            sink.abort()
            raise
        sink.finish()

    def check_archive(self, pg_restore: str) -> None:
        """Decrypt, decompress and read every block with ``pg_restore -f /dev/null`` (streamed for
        custom archives; a directory archive is spooled, as pg_restore reads it by file)."""
        if self.format == "custom":
            self._stream_into(restore_argv(pg_restore, fmt="custom", dbname_arg=None), env=None)
            return
        with Spool(self.spool_dir, "verify") as spool:
            path = self._spool(spool)
            run_tool(restore_argv(pg_restore, fmt=self.format, dbname_arg=None, path=path), "pg_restore")

    def restore_into(self, server: PgConnection, dbname: str, *, pg_restore: str, flags: RestoreFlags,
                     jobs: int) -> None:
        """pg_restore into ``dbname``: streamed into stdin for one job of a custom archive,
        otherwise spooled first (pg_restore -j cannot read a pipe)."""
        with ClientEnv(server, dbname) as client:
            if self.format == "custom" and jobs <= 1:
                argv = restore_argv(pg_restore, fmt="custom", dbname_arg=client.dbname_arg, flags=flags)
                self._stream_into(argv, client.env())
                return
            with Spool(self.spool_dir, "restore") as spool:
                path = self._spool(spool)
                argv = restore_argv(pg_restore, fmt=self.format, dbname_arg=client.dbname_arg, flags=flags,
                                    jobs=jobs, path=path)
                run_tool(argv, "pg_restore", env=client.env())

    def row_count_problems(self, server: PgConnection, dbname: str) -> t.List[str]:
        """Every table of the manifest counted in ``dbname`` and compared with the backup's counts."""
        expected = self.row_counts
        connection = server.connect(dbname)
        try:
            cur = connection.cursor()
            present = {"%s.%s" % pair for pair in list_tables(cur)}
            actual = count_rows(cur, [name for name in expected if name in present])
        finally:
            connection.close()
        return compare_counts(expected, actual, 'database "%s"' % dbname)
