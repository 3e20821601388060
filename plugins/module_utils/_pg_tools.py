# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PostgreSQL client programs: finding a ``pg_dump``/``pg_restore`` that can talk to the server
(:func:`find_binary`), their environment (:class:`ClientEnv`: a quoted connection string and a
password file, nothing else secret), their argv (:func:`dump_argv`, :func:`restore_argv`), and
pg_dump's table selection (:class:`DumpFilters`), mirrored so row counts describe exactly what
pg_dump dumps."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import subprocess
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import PassFile, PgConnection, passfile_lines
from ansible_collections.runbook.ops.plugins.module_utils._stream import StreamError

# Client binaries are looked up here (Debian/Ubuntu, RHEL/PGDG, source installs), then in PATH.
BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql@*/bin")
# Environment variables the client programs must not inherit: another password or password
# file, a service definition (which can name another host), server options.
_DROPPED_ENV = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")

Version = t.Tuple[int, int]


# --------------------------------------------------------------------------- client binaries

def parse_client_version(text: str) -> Version:
    """``pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`` -> (15, 14)."""
    match = _VERSION_RE.search(text)
    if not match:
        raise RunbookError("cannot read the version from %r" % text.strip()[:200])
    return int(match.group(1)), int(match.group(2) or 0)


def client_version(path: str) -> Version:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RunbookError("cannot run %s --version: %s" % (path, exc))
    return parse_client_version(out)


def candidate_binaries(program: str, path_env: t.Optional[str] = None) -> t.List[str]:
    found: t.List[str] = []
    for pattern in BIN_GLOBS:
        for directory in sorted(glob.glob(pattern)):
            candidate = os.path.join(directory, program)
            if os.access(candidate, os.X_OK) and candidate not in found:
                found.append(candidate)
    in_path = shutil.which(program, path=path_env)
    if in_path and os.path.realpath(in_path) not in [os.path.realpath(f) for f in found]:
        found.append(in_path)
    return found


def choose_binary(program: str, server_major: int, candidates: t.Sequence[t.Tuple[str, Version]],
                  where: str) -> t.Tuple[str, Version]:
    """The client of the server's major version, else the oldest newer one; older clients refuse
    (pg_dump cannot dump a newer server) and are a clear error."""
    usable = [c for c in candidates if c[1][0] >= server_major]
    if not usable:
        if not candidates:
            raise RunbookError("%s not found (looked in %s and PATH); install the PostgreSQL %d client "
                               "(e.g. postgresql-client-%d) on the managed host"
                               % (program, ", ".join(BIN_GLOBS), server_major, server_major))
        have = ", ".join("%s %d.%d" % (path, v[0], v[1]) for path, v in candidates)
        raise RunbookError("%s is too old for the PostgreSQL %d server on %s (found %s); install the "
                           "PostgreSQL %d client tools" % (program, server_major, where, have, server_major))
    usable.sort(key=lambda c: (c[1][0] != server_major, c[1]))
    return usable[0]


def find_binary(program: str, server_major: int, where: str) -> t.Tuple[str, Version]:
    candidates = [(path, client_version(path)) for path in candidate_binaries(program)]
    return choose_binary(program, server_major, candidates, where)


# --------------------------------------------------------------------------- environment

class ClientEnv:
    """What pg_dump and pg_restore get for one database: the ``--dbname`` connection string and an
    environment whose only secret-bearing entry is ``PGPASSFILE`` (see :class:`PassFile`), closed
    on every exit path."""

    def __init__(self, conn: PgConnection, dbname: str, use_memfd: bool = True) -> None:
        self.conn = conn
        self.dbname = dbname
        self.use_memfd = use_memfd
        self.passfile: t.Optional[PassFile] = None

    def __enter__(self) -> "ClientEnv":
        return self

    @property
    def dbname_arg(self) -> str:
        return "--dbname=%s" % self.conn.conninfo(self.dbname)

    def env(self) -> t.Dict[str, str]:
        """Our environment (PATH, locale, PGSSL*...) without another password or service, plus the password file."""
        env = {key: value for key, value in os.environ.items() if key not in _DROPPED_ENV}
        if self.conn.password:
            if self.passfile is None:
                self.passfile = PassFile(passfile_lines(self.conn, self.dbname), use_memfd=self.use_memfd)
            env["PGPASSFILE"] = self.passfile.path
        return env

    def close(self) -> None:
        if self.passfile is not None:
            self.passfile.close()
            self.passfile = None

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- table selection

def _pattern_regex(pattern: str) -> str:
    """One part of a pg_dump pattern: unquoted text folds to lower case, ``*`` and ``?`` are wildcards."""
    out = []
    quoted = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == '"':
            if quoted and pattern[i + 1:i + 2] == '"':
                out.append('"')
                i += 2
                continue
            quoted = not quoted
        elif not quoted and char == "*":
            out.append(".*")
        elif not quoted and char == "?":
            out.append(".")
        else:
            out.append(re.escape(char if quoted else char.lower()))
        i += 1
    return "".join(out)


def _split_pattern(pattern: str) -> t.Tuple[t.Optional[str], str]:
    """``[database.]schema.table``: the last two parts split at unquoted dots (a database part is ignored)."""
    quoted = False
    parts = [""]
    for char in pattern:
        if char == '"':
            quoted = not quoted
        if char == "." and not quoted:
            parts.append("")
        else:
            parts[-1] += char
    if len(parts) == 1:
        return None, parts[0]
    return parts[-2], parts[-1]


def matches(pattern: str, schema: str, name: t.Optional[str] = None) -> bool:
    """Does a pg_dump ``-n``/``-t`` style pattern match ``schema`` (or ``schema.name``)?"""
    if name is None:
        return re.fullmatch(_pattern_regex(pattern), schema) is not None
    schema_part, name_part = _split_pattern(pattern)
    if schema_part is not None and re.fullmatch(_pattern_regex(schema_part), schema) is None:
        return False
    return re.fullmatch(_pattern_regex(name_part), name) is not None


# pg_dump's pattern options, each with its flag.
FILTER_FLAGS = (("schemas", "--schema"), ("exclude_schemas", "--exclude-schema"), ("tables", "--table"),
                ("exclude_tables", "--exclude-table"), ("exclude_table_data", "--exclude-table-data"))


@dataclasses.dataclass(frozen=True)
class DumpFilters:
    """pg_dump's table selection: ``--schema``, ``--exclude-schema``, ``--table``, ``--exclude-table``
    and ``--exclude-table-data`` patterns."""

    schemas: t.List[str]
    exclude_schemas: t.List[str]
    tables: t.List[str]
    exclude_tables: t.List[str]
    exclude_table_data: t.List[str]

    def args(self) -> t.List[str]:
        return ["%s=%s" % (flag, pattern) for key, flag in FILTER_FLAGS for pattern in getattr(self, key)]

    def given(self) -> t.Dict[str, t.List[str]]:
        """The filters that are set, as recorded in the manifest."""
        return {key: list(getattr(self, key)) for key, _flag in FILTER_FLAGS if getattr(self, key)}

    def _dumped(self, schema: str, name: str) -> bool:
        if self.tables:
            if not any(matches(p, schema, name) for p in self.tables):
                return False
        else:
            if self.schemas and not any(matches(p, schema) for p in self.schemas):
                return False
            if any(matches(p, schema) for p in self.exclude_schemas):
                return False
        return not any(matches(p, schema, name) for p in self.exclude_tables)

    def select(self, tables: t.Sequence[t.Tuple[str, str]]) -> t.Tuple[t.List[str], t.List[str]]:
        """Which tables pg_dump dumps: ``(with data, schema only)`` as ``schema.table``.

        As pg_dump: with ``tables`` given, only matching tables are dumped and the schema filters do
        not apply; otherwise ``schemas``/``exclude_schemas`` select; ``exclude_tables`` always removes;
        ``exclude_table_data`` keeps the definition but not the rows.
        """
        with_data, schema_only = [], []
        for schema, name in tables:
            if not self._dumped(schema, name):
                continue
            qualified = "%s.%s" % (schema, name)
            if any(matches(p, schema, name) for p in self.exclude_table_data):
                schema_only.append(qualified)
            else:
                with_data.append(qualified)
        return with_data, schema_only


# --------------------------------------------------------------------------- argv

def dump_argv(pg_dump: str, *, fmt: str, filters: DumpFilters, dbname_arg: str, snapshot: t.Optional[str] = None,
              jobs: int = 1, path: t.Optional[str] = None) -> t.List[str]:
    """``pg_dump`` argv: uncompressed (-Z0; our zstd is multi-threaded), no secrets; ``dbname_arg``
    is ``ClientEnv.dbname_arg``."""
    argv = [pg_dump, "--format=%s" % fmt, "--compress=0", "--no-password", dbname_arg]
    if snapshot:
        argv.append("--snapshot=%s" % snapshot)
    if fmt == "directory":
        argv += ["--jobs=%d" % max(1, jobs), "--file=%s" % path]
    return argv + filters.args()


@dataclasses.dataclass(frozen=True)
class RestoreFlags:
    """How pg_restore writes into a database: ``clean`` (``--clean --if-exists``, in one transaction
    when it runs as one job), ``no_owner`` and ``role`` as the options of the same names."""

    clean: bool
    no_owner: bool
    role: t.Optional[str]


def restore_argv(pg_restore: str, *, fmt: str, dbname_arg: t.Optional[str], flags: t.Optional[RestoreFlags] = None,
                 jobs: int = 1, path: t.Optional[str] = None) -> t.List[str]:
    """``pg_restore`` argv: ``dbname_arg`` is ``ClientEnv.dbname_arg`` (a quoted connection string,
    no password), or None to read the archive into ``/dev/null``; ``path`` is the archive (None: stdin)."""
    argv = [pg_restore, "--format=%s" % ("directory" if fmt == "directory" else "custom"), "--exit-on-error",
            "--no-password"]
    argv.append("--file=/dev/null" if dbname_arg is None else dbname_arg)
    if jobs > 1:
        argv.append("--jobs=%d" % jobs)
    if flags is not None:
        if flags.clean:
            argv += ["--clean", "--if-exists"]
            if jobs <= 1:  # pg_restore refuses --single-transaction with --jobs
                argv.append("--single-transaction")
        if flags.no_owner:
            argv.append("--no-owner")
        if flags.role:
            argv.append("--role=%s" % flags.role)
    if path:
        argv.append(path)
    return argv


def run_tool(argv: t.Sequence[str], program: str, env: t.Optional[t.Mapping[str, str]] = None) -> None:
    """Run a client program to the end (no stdin); a non-zero exit is a failure of that stage, with its stderr."""
    proc = subprocess.run(list(argv), env=dict(env) if env is not None else None, capture_output=True, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise StreamError(program, "%s exited with status %d: %s"
                          % (program, proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[-2000:]))
