# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How we talk to PostgreSQL: connections (psycopg 3) for catalog work, snapshot-consistent row
counts, pg_dump/pg_restore argv and environment, client/server version checks, and the backup /
verify / restore flows of ``pg_backup``.

Names are data, never connection settings. libpq reads a ``dbname`` that holds ``=`` or starts
with ``postgresql://`` as a whole connection string (``pg_restore --dbname="host=elsewhere
dbname=x"`` connects elsewhere). So every option is checked first (:func:`check_options`: no
control characters, names within PostgreSQL's 63 bytes, numbers in range), and the client
programs get their connection settings only as one quoted connection string
(``--dbname=dbname='...' host='...' ...``, see ``_names.conninfo``), in which every value is
literal. psycopg does the same quoting for its keyword arguments.

Passwords never reach argv or the environment: the client programs read a libpq password file
with one line scoped to the real host, port, database and user (never ``*``). On Linux that file
is an anonymous memory file (``memfd_create``) that the child opens as
``/proc/<our pid>/fd/<n>``; it exists only while this process lives, so nothing is left on disk
even after SIGKILL. Elsewhere it is a 0600 file in a private directory that is removed on every
exit path and, after a kill, by the next run (see :class:`PassFile`).

Backup (custom format): one connection opens a REPEATABLE READ transaction and exports its
snapshot; ``pg_dump -Fc -Z0 --snapshot=...`` streams the database through our compression and
encryption into the repository while the same transaction counts every dumped table's rows
exactly (same snapshot, so the counts describe exactly the dumped data). Directory format
(``jobs`` > 1) dumps into a 0700 spool directory and stores one object per file.

Restore: the stored object is checked, decrypted and decompressed on the fly into ``pg_restore``'s
standard input (one job), or spooled first (``jobs`` > 1, directory format). ``swap`` restores
into a temporary database, compares its row counts with the manifest, then renames.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, Stopwatch
from ansible_collections.runbook.ops.plugins.module_utils._backup_job import check_compression
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    check_params, conninfo, host_name, int_in, no_control, optional, passfile_field, path_segment, pg_name, shown)
from ansible_collections.runbook.ops.plugins.module_utils._stream import (
    NullSink, StreamError, SubprocessSink, SubprocessSource, decode_stream)

KIND = "postgresql"
CUSTOM_OBJECT = "database.dump"
SSL_MODES = ("allow", "disable", "prefer", "require", "verify-ca", "verify-full")
MAX_IDENTIFIER = 63
MAX_JOBS = 128
APPLICATION_NAME = "runbook.ops pg_backup"
# Client binaries are looked up here (Debian/Ubuntu, RHEL/PGDG, source installs), then in PATH.
BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql@*/bin")
# Where the password file lives when memfd is not available: one private directory per user.
PASSFILE_ROOT_PREFIX = "runbook-pg-pass-"
# Environment variables the client programs must not inherit: another password or password
# file, a service definition (which can name another host), server options.
_DROPPED_ENV = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS")


def connection_argspec() -> dict:
    """Connection options, named as in community.postgresql so one module_defaults block serves both."""
    return dict(
        login_host=dict(type="str", default="", aliases=["host"]),
        login_port=dict(type="int", default=5432, aliases=["port"]),
        login_user=dict(type="str", default="postgres", aliases=["login"]),
        login_password=dict(type="str", default="", no_log=True),
        login_unix_socket=dict(type="str", default="", aliases=["unix_socket"]),
        ssl_mode=dict(type="str", default="prefer", choices=list(SSL_MODES)),
        ca_cert=dict(type="str", aliases=["ssl_rootcert"]),
        connect_timeout=dict(type="int", default=10),
    )


# --------------------------------------------------------------------------- option checks

def login_host(what: str, value: t.Any) -> str:
    """One host name or IP address (a directory means a Unix socket, as in libpq)."""
    text = no_control(what, value)
    if text.startswith("/"):
        return unix_socket_dir(what, text)
    return host_name(what, text)


def unix_socket_dir(what: str, value: t.Any) -> str:
    """The directory of a server's Unix socket: an absolute path, one server."""
    text = no_control(what, value)
    if not text.startswith("/"):
        raise RunbookError("%s %s is not an absolute directory path (the directory holding the server's "
                           ".s.PGSQL.<port> socket)" % (what, shown(text)))
    if "," in text:
        raise RunbookError("%s %s names more than one socket directory; give one server" % (what, shown(text)))
    return text


def password_text(what: str, value: t.Any) -> str:
    """A password: any text a password file line can hold. The message never shows it."""
    if not isinstance(value, str):
        raise RunbookError("%s is not a string" % what)
    if any(char in value for char in "\x00\r\n"):
        raise RunbookError("%s holds a NUL, carriage return or newline character, which a libpq password "
                           "file (and the server's protocol) cannot carry" % what)
    return value


def pattern_text(what: str, value: t.Any) -> str:
    """A pg_dump table or schema pattern: text without control characters."""
    return no_control(what, value)


def option_rules() -> t.Dict[str, t.Callable[[str, t.Any], t.Any]]:
    """Validators of every user-given name and connection option of ``pg_backup`` (see ``_names.check_params``)."""
    from ansible_collections.runbook.ops.plugins.module_utils._repository import name_rules
    rules: t.Dict[str, t.Callable[[str, t.Any], t.Any]] = dict(name_rules())
    rules.update(
        db=pg_name, target_db=optional(pg_name), role=optional(pg_name), login_user=pg_name,
        login_host=login_host, login_unix_socket=unix_socket_dir, login_password=password_text,
        ca_cert=no_control,
        schemas=pattern_text, exclude_schemas=pattern_text, tables=pattern_text, exclude_tables=pattern_text,
        exclude_table_data=pattern_text,
    )
    return rules


def check_numbers(params: t.Mapping[str, t.Any]) -> None:
    """Ports, timeouts, job counts and compression settings within what the tools accept."""
    if params.get("login_port") is not None:
        int_in("login_port", params["login_port"], 1, 65535)
    if params.get("connect_timeout") is not None:
        int_in("connect_timeout", params["connect_timeout"], 1, 86400, "0 would wait forever")
    if params.get("jobs") is not None:
        int_in("jobs", params["jobs"], 1, MAX_JOBS)
    check_compression(params)


def check_options(params: t.Mapping[str, t.Any]) -> None:
    """Every check of ``pg_backup``'s options, before anything connects or reads the repository."""
    check_params(params, option_rules())
    check_numbers(params)
    if not params.get("set"):
        try:
            path_segment("set", params["db"])
        except RunbookError as exc:
            raise RunbookError("db %s cannot name the backup set (the set defaults to db): %s; set the option "
                               "set to a plain name" % (shown(params["db"]), exc.msg))


# --------------------------------------------------------------------------- connection settings

class Conn:
    """Connection settings for one server; builds psycopg kwargs and the client programs' connection string."""

    def __init__(self, params: t.Mapping[str, t.Any]) -> None:
        self.host = params.get("login_unix_socket") or params.get("login_host") or ""
        self.port = int(params.get("login_port") or 5432)
        self.user = params.get("login_user") or "postgres"
        self.password = params.get("login_password") or ""
        self.ssl_mode = params.get("ssl_mode") or "prefer"
        self.ca_cert = params.get("ca_cert")
        self.connect_timeout = int(params.get("connect_timeout") or 10)

    @property
    def where(self) -> str:
        if not self.host or self.host.startswith("/"):
            return "%s (unix socket %s)" % (self.port, self.host or "default directory")
        return "%s:%d" % (self.host, self.port)

    def settings(self, dbname: str) -> dict:
        """libpq keywords for ``dbname`` on this server, without the password."""
        args: dict = dict(dbname=dbname, user=self.user, port=self.port, sslmode=self.ssl_mode,
                          connect_timeout=self.connect_timeout, application_name=APPLICATION_NAME)
        if self.host:
            args["host"] = self.host
        if self.ca_cert:
            args["sslrootcert"] = self.ca_cert
        return args

    def kwargs(self, dbname: str) -> dict:
        """psycopg keyword arguments; psycopg quotes every value, so ``dbname`` stays a literal name."""
        args = self.settings(dbname)
        if self.password:
            args["password"] = self.password
        return args

    def conninfo(self, dbname: str) -> str:
        """The ``--dbname`` value for pg_dump and pg_restore: every setting quoted, so the name is literal."""
        return conninfo(self.settings(dbname))

    def connect(self, dbname: str, autocommit: bool = True) -> t.Any:
        try:
            import psycopg
        except ImportError:
            raise RunbookError("the psycopg (version 3) Python package is required (pip install 'psycopg[binary]')")
        try:
            return psycopg.connect(autocommit=autocommit, **self.kwargs(dbname))
        except psycopg.Error as exc:
            text = str(exc).strip()
            if "does not exist" in text and "database" in text:
                raise RunbookError('database "%s" does not exist on %s' % (dbname, self.where))
            raise RunbookError('cannot connect to database "%s" on %s as %s: %s'
                               % (dbname, self.where, self.user, _last_line(text)))

    def maintenance(self) -> t.Any:
        """A connection to a database that is not the one being renamed or dropped."""
        try:
            return self.connect("postgres")
        except RunbookError as exc:
            if "does not exist" not in exc.msg:
                raise
            return self.connect("template1")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[-2:]) if lines else text


def passfile_lines(conn: Conn, dbname: str) -> str:
    """The password file for one connection: host, port, database and user are the real ones.

    libpq matches the host field against the ``host`` it connects to; for a Unix socket that is
    the socket directory, except libpq's compiled-in default directory (and no host at all),
    which it matches as ``localhost``; a socket connection gets both lines.
    """
    hosts = [conn.host] if conn.host else []
    if not conn.host or conn.host.startswith("/"):
        hosts.append("localhost")
    fields = (str(conn.port), dbname, conn.user, conn.password)
    return "".join(":".join(passfile_field(value) for value in (host,) + fields) + "\n" for host in hosts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PassFile:
    """A libpq password file that the client programs read as ``path``.

    With memfd (Linux): an anonymous 0600 memory file, reached by the children through
    ``/proc/<pid>/fd/<n>`` (each open starts at offset 0, so pg_dump's and pg_restore's parallel
    workers read it too). It has no name on any filesystem and disappears with this process,
    even on SIGKILL.

    Without it: a 0600 file in ``<tmp>/runbook-pg-pass-<uid>/<pid>-<random>/`` (0700), removed
    on close; a directory left by a killed run (its pid is gone) is removed by the next one.
    """

    def __init__(self, text: str, use_memfd: bool = True, root: t.Optional[str] = None) -> None:
        self.fd: t.Optional[int] = None
        self.directory: t.Optional[str] = None
        if use_memfd and self._memfd(text):
            return
        self._file(text, root or os.path.join(tempfile.gettempdir(), "%s%d" % (PASSFILE_ROOT_PREFIX, os.geteuid())))

    def _memfd(self, text: str) -> bool:
        if not hasattr(os, "memfd_create"):
            return False
        try:
            fd = os.memfd_create("runbook-pgpass", getattr(os, "MFD_CLOEXEC", 1))
        except OSError:
            return False
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode("utf-8"))
            path = "/proc/%d/fd/%d" % (os.getpid(), fd)
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != 0o600:
                raise OSError("not a private regular file")
        except OSError:
            os.close(fd)
            return False
        self.fd, self.path, self.kind = fd, path, "memfd"
        return True

    def _file(self, text: str, root: str) -> None:
        try:
            try:
                os.mkdir(root, 0o700)
            except FileExistsError:
                pass
            info = os.lstat(root)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                raise RunbookError("%s is not a private directory of this user (0700, ours, not a link); "
                                   "remove it so the PostgreSQL password file can be kept there" % root)
            sweep_passfiles(root)
            self.directory = tempfile.mkdtemp(prefix="%d-" % os.getpid(), dir=root)
            self.path = os.path.join(self.directory, "pgpass")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            self.close()
            raise RunbookError("cannot write the PostgreSQL password file under %s: %s" % (root, exc.strerror or exc))
        self.kind = "file"

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def sweep_passfiles(root: str) -> t.List[str]:
    """Remove the password-file directories under ``root`` whose process is gone (killed runs)."""
    removed = []
    for entry in os.listdir(root):
        head = entry.split("-", 1)[0]
        if head.isdigit() and not _pid_alive(int(head)):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            removed.append(entry)
    return removed


class ClientEnv:
    """What pg_dump and pg_restore get for one database: the ``--dbname`` connection string and an
    environment whose only secret-bearing entry is ``PGPASSFILE`` (see :class:`PassFile`), closed
    on every exit path."""

    def __init__(self, conn: Conn, dbname: str, use_memfd: bool = True) -> None:
        self.conn = conn
        self.dbname = dbname
        self.use_memfd = use_memfd
        self.passfile: t.Optional[PassFile] = None

    def __enter__(self) -> "ClientEnv":
        return self

    @property
    def dbname_arg(self) -> str:
        return "--dbname=%s" % self.conn.conninfo(self.dbname)

    def env(self) -> dict:
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

    def __exit__(self, *exc: t.Any) -> None:
        self.close()


def quote_ident(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


# --------------------------------------------------------------------------- client binaries

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def parse_client_version(text: str) -> t.Tuple[int, int]:
    """``pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`` -> (15, 14)."""
    match = _VERSION_RE.search(text)
    if not match:
        raise RunbookError("cannot read the version from %r" % text.strip()[:200])
    return int(match.group(1)), int(match.group(2) or 0)


def client_version(path: str) -> t.Tuple[int, int]:
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


def choose_binary(program: str, server_major: int, candidates: t.Sequence[t.Tuple[str, t.Tuple[int, int]]],
                  where: str) -> t.Tuple[str, t.Tuple[int, int]]:
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


def find_binary(program: str, server_major: int, where: str) -> t.Tuple[str, t.Tuple[int, int]]:
    candidates = [(path, client_version(path)) for path in candidate_binaries(program)]
    return choose_binary(program, server_major, candidates, where)


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


def select_tables(tables: t.Sequence[t.Tuple[str, str]], filters: dict) -> t.Tuple[t.List[str], t.List[str]]:
    """Which tables pg_dump dumps with these filters: ``(with data, schema only)`` as ``schema.table``.

    As pg_dump: with ``tables`` given, only matching tables are dumped and the schema filters do
    not apply; otherwise ``schemas``/``exclude_schemas`` select; ``exclude_tables`` always removes;
    ``exclude_table_data`` keeps the definition but not the rows.
    """
    with_data, schema_only = [], []
    for schema, name in tables:
        if filters.get("tables"):
            if not any(matches(p, schema, name) for p in filters["tables"]):
                continue
        else:
            if filters.get("schemas") and not any(matches(p, schema) for p in filters["schemas"]):
                continue
            if any(matches(p, schema) for p in filters.get("exclude_schemas") or []):
                continue
        if any(matches(p, schema, name) for p in filters.get("exclude_tables") or []):
            continue
        qualified = "%s.%s" % (schema, name)
        if any(matches(p, schema, name) for p in filters.get("exclude_table_data") or []):
            schema_only.append(qualified)
        else:
            with_data.append(qualified)
    return with_data, schema_only


def filter_args(filters: dict) -> t.List[str]:
    args: t.List[str] = []
    for key, flag in (("schemas", "--schema"), ("exclude_schemas", "--exclude-schema"), ("tables", "--table"),
                      ("exclude_tables", "--exclude-table"), ("exclude_table_data", "--exclude-table-data")):
        for pattern in filters.get(key) or []:
            args.append("%s=%s" % (flag, pattern))
    return args


# Ordinary and partition-leaf tables pg_dump would dump data for: no system schemas, not
# members of an extension.
_TABLES_SQL = """
SELECT n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1, 2
"""

_FACTS_SQL = """
SELECT current_setting('server_version'), current_setting('server_version_num')::int,
       pg_database_size(current_database()), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       pg_get_userbyid(d.datdba)
  FROM pg_database d WHERE d.datname = current_database()
"""


def database_facts(cur: t.Any) -> dict:
    cur.execute(_FACTS_SQL)
    version, version_num, size, encoding, collate, ctype, owner = cur.fetchone()
    return {"server_version": version, "server_version_num": version_num, "server_major": version_num // 10000,
            "database_size": size, "encoding": encoding, "collate": collate, "ctype": ctype, "owner": owner}


def list_tables(cur: t.Any) -> t.List[t.Tuple[str, str]]:
    cur.execute(_TABLES_SQL)
    return [(row[0], row[1]) for row in cur.fetchall()]


def count_rows(cur: t.Any, qualified: t.Sequence[str]) -> t.Dict[str, int]:
    counts = {}
    for name in qualified:
        schema, table = name.split(".", 1)
        cur.execute("SELECT count(*) FROM ONLY %s.%s" % (quote_ident(schema), quote_ident(table)))
        counts[name] = int(cur.fetchone()[0])
    return counts


def compare_counts(expected: t.Dict[str, int], actual: t.Dict[str, int], where: str) -> t.List[str]:
    problems = []
    for name, rows in sorted(expected.items()):
        if name not in actual:
            problems.append("table %s is missing from %s" % (name, where))
        elif actual[name] != rows:
            problems.append("table %s has %d rows in %s, the backup's manifest says %d" % (name, actual[name], where, rows))
    return problems


# --------------------------------------------------------------------------- server-side helpers

def database_exists(cur: t.Any, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return cur.fetchone() is not None


def sessions_on(cur: t.Any, name: str) -> t.List[dict]:
    cur.execute("SELECT pid, usename, application_name, client_addr::text, state FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid", (name,))
    return [{"pid": r[0], "user": r[1], "application": r[2] or "", "client": r[3] or "local", "state": r[4] or ""}
            for r in cur.fetchall()]


def describe_sessions(sessions: t.Sequence[dict]) -> str:
    return ", ".join("pid %d (user %s, application %r, from %s, %s)"
                     % (s["pid"], s["user"], s["application"], s["client"], s["state"]) for s in sessions)


def terminate_sessions(cur: t.Any, name: str) -> int:
    cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()", (name,))
    return int(cur.fetchone()[0])


def create_database(cur: t.Any, name: str, facts: dict, owner: t.Optional[str]) -> None:
    """CREATE DATABASE from template0 with the source's encoding and locale (when this server has it)."""
    import psycopg
    base = "CREATE DATABASE %s TEMPLATE template0" % quote_ident(name)
    if owner:
        base += " OWNER %s" % quote_ident(owner)
    encoding = facts.get("encoding")
    attempts = []
    if encoding and facts.get("collate") and facts.get("ctype"):
        attempts.append(base + " ENCODING %s LC_COLLATE %s LC_CTYPE %s" % (
            _literal(encoding), _literal(facts["collate"]), _literal(facts["ctype"])))
    if encoding:
        attempts.append(base + " ENCODING %s" % _literal(encoding))
    attempts.append(base)
    last: t.Optional[Exception] = None
    for sql in attempts:
        try:
            cur.execute(sql)
            return
        except psycopg.errors.DuplicateDatabase:
            raise RunbookError('database "%s" already exists' % name)
        except psycopg.Error as exc:  # locale or encoding unknown here: fall back to the server's defaults
            last = exc
    raise RunbookError('cannot create database "%s": %s' % (name, _last_line(str(last))))


def _literal(value: str) -> str:
    return "'%s'" % value.replace("'", "''")


def drop_database(cur: t.Any, name: str) -> None:
    cur.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name))


def role_exists(cur: t.Any, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    return cur.fetchone() is not None


def _head(name: str, room: int) -> str:
    """The first ``room`` bytes of ``name`` in UTF-8, never cutting a character."""
    return name.encode("utf-8")[:max(0, room)].decode("utf-8", "ignore")


def scratch_name(base: str, tag: str) -> str:
    """``<base>_<tag>_<random>`` within PostgreSQL's 63-byte identifier limit (counted in bytes)."""
    suffix = "_%s_%s" % (tag, secrets.token_hex(3))
    return _head(base, MAX_IDENTIFIER - len(suffix)) + suffix


def previous_name(target: str, backup_id: str) -> str:
    """``<target>_pre_<backup_id>``; a long target name is shortened (never the backup id, which
    says what the previous database was replaced by) to fit PostgreSQL's 63-byte limit."""
    suffix = "_pre_%s" % backup_id
    return _head(target, MAX_IDENTIFIER - len(suffix.encode())) + suffix


# --------------------------------------------------------------------------- pg_restore

def restore_argv(pg_restore: str, fmt: str, dbname_arg: t.Optional[str], jobs: int = 1, clean: bool = False,
                 no_owner: bool = False, role: t.Optional[str] = None, path: t.Optional[str] = None,
                 single_transaction: bool = False) -> t.List[str]:
    """``pg_restore`` argv: ``dbname_arg`` is ``ClientEnv.dbname_arg`` (a quoted connection string,
    no password), or None to read the archive into ``/dev/null``."""
    argv = [pg_restore, "--format=%s" % ("directory" if fmt == "directory" else "custom"), "--exit-on-error",
            "--no-password"]
    argv.append("--file=/dev/null" if dbname_arg is None else dbname_arg)
    if jobs > 1:
        argv.append("--jobs=%d" % jobs)
    if clean:
        argv += ["--clean", "--if-exists"]
    if single_transaction and jobs <= 1:
        argv.append("--single-transaction")
    if no_owner:
        argv.append("--no-owner")
    if role:
        argv.append("--role=%s" % role)
    if path:
        argv.append(path)
    return argv


def dump_argv(pg_dump: str, fmt: str, snapshot: t.Optional[str], filters: dict, jobs: int = 1,
              path: t.Optional[str] = None, dbname_arg: t.Optional[str] = None) -> t.List[str]:
    """``pg_dump`` argv: uncompressed (-Z0; our zstd is multi-threaded), no secrets; ``dbname_arg``
    is ``ClientEnv.dbname_arg``."""
    argv = [pg_dump, "--format=%s" % fmt, "--compress=0", "--no-password"]
    if dbname_arg:
        argv.append(dbname_arg)
    if snapshot:
        argv.append("--snapshot=%s" % snapshot)
    if fmt == "directory":
        argv += ["--jobs=%d" % max(1, jobs), "--file=%s" % path]
    argv += filter_args(filters)
    return argv


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

    def __exit__(self, *exc: t.Any) -> None:
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


def spool_objects(repo: t.Any, manifest: dict, identities: t.Sequence[t.Any], directory: str) -> None:
    """Decode every object of ``manifest`` into ``directory`` (checked against the manifest)."""
    for entry in manifest.get("objects", []):
        sink = _FileSink(os.path.join(directory, entry["name"]))
        try:
            repo.read_object(manifest, entry, sink, identities)
        finally:
            sink.close()


def checksum_problems(repo: t.Any, manifest: dict) -> t.List[str]:
    """Stored bytes against the manifest (size and sha256), without decrypting."""
    problems = []
    for entry in manifest.get("objects", []):
        try:
            reader = repo.backend.open_reader(repo.object_key(manifest, entry["name"]))
            try:
                decode_stream(reader, NullSink(), "none", encrypted=False, expected_sha256=entry.get("sha256"),
                              expected_size=entry.get("size"), object_name=entry["name"])
            finally:
                reader.close()
        except RunbookError as exc:
            problems.append(exc.msg if entry["name"] in exc.msg else "%s: %s" % (entry["name"], exc.msg))
    return problems


def stream_restore(repo: t.Any, manifest: dict, identities: t.Sequence[t.Any], argv_for: t.Callable[[t.Optional[str]], t.List[str]],
                   env: dict, jobs: int, spool_dir: t.Optional[str]) -> None:
    """Feed the backup to pg_restore: streamed into stdin for one job of a custom archive,
    otherwise spooled into a private directory first (pg_restore -j cannot read a pipe)."""
    fmt = manifest.get("format", "custom")
    if fmt == "custom" and jobs <= 1:
        entry = _custom_entry(manifest)
        sink = SubprocessSink(argv_for(None), env=env, name="pg_restore")
        try:
            repo.read_object(manifest, entry, sink, identities)
        except BaseException:
            sink.abort()
            raise
        sink.finish()
        return
    with Spool(spool_dir, "restore") as spool:
        spool_objects(repo, manifest, identities, spool.path)
        path = spool.path if fmt == "directory" else os.path.join(spool.path, _custom_entry(manifest)["name"])
        proc = subprocess.run(argv_for(path), env=env, capture_output=True, check=False, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise StreamError("pg_restore", "pg_restore exited with status %d: %s"
                              % (proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[-2000:]))


def _custom_entry(manifest: dict) -> dict:
    for entry in manifest.get("objects", []):
        if entry["name"] == CUSTOM_OBJECT:
            return entry
    raise RunbookError("backup %s has no %s object; it is not a pg_backup custom-format backup"
                       % (manifest.get("id"), CUSTOM_OBJECT))


# --------------------------------------------------------------------------- the module's work

class PgBackup:
    """One task of ``pg_backup``; ``params`` are the module's options."""

    def __init__(self, params: dict, check_mode: bool = False, warn: t.Callable[[str], None] = lambda m: None) -> None:
        check_options(params)
        self.params = params
        self.check_mode = check_mode
        self.warn = warn
        self.conn = Conn(params)
        self.db = params["db"]
        self.set = params.get("set") or self.db
        self.jobs = int(params.get("jobs") or 1)
        self.spool_dir = params.get("spool_dir")
        self.filters = {key: params.get(key) or [] for key in
                        ("schemas", "exclude_schemas", "tables", "exclude_tables", "exclude_table_data")}
        self._repo: t.Any = None

    @property
    def repo(self) -> t.Any:
        if self._repo is None:
            from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
            self._repo = Repository.from_options(self.params)
        return self._repo

    def run(self) -> dict:
        state = self.params.get("state") or "backup"
        if state == "backup":
            return self.backup()
        if state == "verify":
            return self.verify()
        return self.restore()

    # ------------------------------------------------------------------ backup

    def backup(self) -> dict:
        result = self._backup()
        result.setdefault("restored_db", None)
        result.setdefault("previous_db", None)
        return result

    def _backup(self) -> dict:
        from ansible_collections.runbook.ops.plugins.module_utils._backup_job import (
            UNENCRYPTED_WARNING, backup_result, compression_settings, fresh_backup, prune_after_success)
        watch = Stopwatch()
        fmt = self.params.get("format") or "custom"
        if fmt == "custom" and self.jobs > 1:
            raise RunbookError("jobs=%d needs format=directory: pg_dump dumps in parallel only into a directory" % self.jobs)
        fresh = fresh_backup(self.repo, KIND, self.set, self.params.get("max_age"))
        if fresh is not None:
            result = backup_result(fresh, watch.elapsed, skipped=True)
            result["msg"] = "backup %s of set %s finished less than %s ago: nothing to do" % (
                fresh["id"], self.set, self.params.get("max_age"))
            return result
        recipients = self.params.get("encryption_recipients") or []
        if not recipients:
            self.warn(UNENCRYPTED_WARNING)
        from ansible_collections.runbook.ops.plugins.module_utils._stream import parse_recipients
        parse_recipients(recipients)  # bad keys fail before the dump starts
        comp = compression_settings(self.params)
        previous_latest = _latest_id(self.repo, self.set)
        connection = self.conn.connect(self.db, autocommit=True)
        try:
            cur = connection.cursor()
            facts = database_facts(cur)
            pg_dump, dump_version = find_binary("pg_dump", facts["server_major"], self.conn.where)
            # The snapshot is exported before the tables are listed: the list, the counts and the
            # dump all see the same database.
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            with_data, schema_only = select_tables(list_tables(cur), self.filters)
            if self.check_mode:
                result = backup_result(None, watch.elapsed)
                result.update(changed=True, msg="would back up database %s (%d bytes, %d tables) on %s into %s"
                              % (self.db, facts["database_size"], len(with_data) + len(schema_only),
                                 self.conn.where, self.repo.url))
                result["diff"] = {"before": {"latest_backup": previous_latest},
                                  "after": {"latest_backup": "(new backup of %s)" % self.db}}
                return result
            with ClientEnv(self.conn, self.db) as client:
                env = client.env()
                with self.repo.new_backup(KIND, self.set, self.params.get("labels")) as writer:
                    counts = _CountThread(cur, with_data)
                    if fmt == "custom":
                        # pg_dump imports the snapshot at start; the counts run in it meanwhile.
                        argv = dump_argv(pg_dump, "custom", snapshot, self.filters, dbname_arg=client.dbname_arg)
                        with SubprocessSource(argv, env=env, name="pg_dump") as source:
                            counts.start()
                            writer.add_object(CUSTOM_OBJECT, source.stdout, compression=comp["algorithm"],
                                              level=comp["level"], threads=comp["threads"], recipients=recipients,
                                              size_hint=facts["database_size"])
                            source.finish()
                    else:
                        counts.start()
                        self._dump_directory(writer, pg_dump, snapshot, client, comp, recipients)
                    row_counts = counts.result(self.db, self.conn.where)
                    cur.execute("COMMIT")
                    source_facts = {"host": self.conn.host or "local socket", "port": self.conn.port,
                                    "database": self.db, "server_version": facts["server_version"],
                                    "server_version_num": facts["server_version_num"],
                                    "database_size": facts["database_size"], "encoding": facts["encoding"],
                                    "collate": facts["collate"], "ctype": facts["ctype"], "owner": facts["owner"],
                                    "pg_dump_version": "%d.%d" % dump_version}
                    extra = {"postgresql": {"row_counts": row_counts, "schema_only_tables": schema_only,
                                            "filters": {k: v for k, v in self.filters.items() if v},
                                            "dump_format": fmt, "jobs": self.jobs if fmt == "directory" else 1}}
                    manifest = writer.commit(source=source_facts, fmt=fmt, compression=comp, extra=extra)
        finally:
            connection.close()
        pruned = prune_after_success(self.repo, KIND, self.set, self.params.get("retention"))
        result = backup_result(manifest, watch.elapsed, pruned=pruned)
        result["msg"] = "backed up database %s (%d tables, %d rows) to %s as %s" % (
            self.db, len(row_counts), sum(row_counts.values()), self.repo.url, manifest["id"])
        result["diff"] = {"before": {"latest_backup": previous_latest}, "after": {"latest_backup": manifest["id"]}}
        return result

    def _dump_directory(self, writer: t.Any, pg_dump: str, snapshot: str, client: ClientEnv, comp: dict,
                        recipients: t.Sequence[str]) -> None:
        with Spool(self.spool_dir, "dump") as spool:
            path = os.path.join(spool.path, "dump")
            argv = dump_argv(pg_dump, "directory", snapshot, self.filters, jobs=self.jobs, path=path,
                             dbname_arg=client.dbname_arg)
            proc = subprocess.run(argv, env=client.env(), capture_output=True, check=False, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise StreamError("pg_dump", "pg_dump exited with status %d: %s"
                                  % (proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[-2000:]))
            names = sorted(os.listdir(path), key=lambda n: (n != "toc.dat", n))
            for name in names:
                with open(os.path.join(path, name), "rb") as handle:
                    writer.add_object(name, handle, compression=comp["algorithm"], level=comp["level"],
                                      threads=comp["threads"], recipients=recipients,
                                      size_hint=os.path.getsize(os.path.join(path, name)))

    # ------------------------------------------------------------------ shared by verify and restore

    def _manifest(self) -> dict:
        manifest = self.repo.get(KIND, self.set, self.params.get("backup_id"))
        if manifest.get("kind") != KIND:
            raise RunbookError("backup %s is a %s backup, not postgresql" % (manifest.get("id"), manifest.get("kind")))
        return manifest

    def _identities(self, manifest: dict) -> t.List[t.Any]:
        from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities
        identities = load_identities(self.params.get("encryption_identity"))
        if manifest.get("encryption", {}).get("algorithm", "none") != "none" and not identities:
            raise RunbookError("backup %s of set %s is encrypted: encryption_identity is required to read it"
                               % (manifest["id"], self.set))
        return identities

    def _server_facts(self) -> t.Tuple[t.Any, dict]:
        connection = self.conn.maintenance()
        cur = connection.cursor()
        cur.execute("SELECT current_setting('server_version_num')::int")
        return connection, {"server_major": cur.fetchone()[0] // 10000}

    def _pg_restore(self, manifest: dict, server_major: int) -> str:
        path, version = find_binary("pg_restore", server_major, self.conn.where)
        dumped = manifest.get("source", {}).get("pg_dump_version")
        if dumped and version[0] < int(str(dumped).split(".", maxsplit=1)[0]):
            raise RunbookError("pg_restore %d.%d (%s) cannot read backup %s, written by pg_dump %s; install a "
                               "newer PostgreSQL client" % (version[0], version[1], path, manifest["id"], dumped))
        return path

    def _archive_check(self, manifest: dict, identities: t.Sequence[t.Any], pg_restore: str) -> None:
        """Decrypt, decompress and read every block with ``pg_restore -f /dev/null`` (streamed for
        custom archives; a directory archive is spooled, as pg_restore reads it by file)."""
        fmt = manifest.get("format", "custom")
        if fmt == "custom":
            sink = SubprocessSink(restore_argv(pg_restore, fmt, None), name="pg_restore")
            try:
                self.repo.read_object(manifest, _custom_entry(manifest), sink, identities)
            except BaseException:
                sink.abort()
                raise
            sink.finish()
            return
        with Spool(self.spool_dir, "verify") as spool:
            spool_objects(self.repo, manifest, identities, spool.path)
            proc = subprocess.run(restore_argv(pg_restore, fmt, None, path=spool.path), capture_output=True,
                                  check=False, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise StreamError("pg_restore", "pg_restore exited with status %d: %s"
                                  % (proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[-2000:]))

    def _restore_into(self, manifest: dict, identities: t.Sequence[t.Any], pg_restore: str, dbname: str,
                      clean: bool = False) -> None:
        fmt = manifest.get("format", "custom")
        jobs = self.jobs

        with ClientEnv(self.conn, dbname) as client:
            def argv_for(path: t.Optional[str]) -> t.List[str]:
                return restore_argv(pg_restore, fmt, client.dbname_arg, jobs=jobs if path else 1, clean=clean,
                                    no_owner=bool(self.params.get("no_owner")), role=self.params.get("role"),
                                    path=path, single_transaction=clean)

            stream_restore(self.repo, manifest, identities, argv_for, client.env(), jobs, self.spool_dir)

    def _count_in(self, dbname: str, manifest: dict) -> t.List[str]:
        expected = manifest.get("postgresql", {}).get("row_counts") or {}
        connection = self.conn.connect(dbname)
        try:
            cur = connection.cursor()
            present = {"%s.%s" % pair for pair in list_tables(cur)}
            actual = count_rows(cur, [name for name in expected if name in present])
        finally:
            connection.close()
        return compare_counts(expected, actual, 'database "%s"' % dbname)

    # ------------------------------------------------------------------ verify

    def verify(self) -> dict:
        watch = Stopwatch()
        level = self.params.get("level") or "archive"
        manifest = self._manifest()
        verified = {"backup_id": manifest["id"], "level": level, "ok": False, "problems": []}
        notes = []
        # The archive pass checks size and sha256 too (at the end of each object): one read suffices.
        problems = checksum_problems(self.repo, manifest) if level == "checksum" else []
        if level in ("archive", "restore"):
            identities = self._identities(manifest)
            connection, server = self._server_facts()
            connection.close()
            pg_restore = self._pg_restore(manifest, server["server_major"])
            try:
                self._archive_check(manifest, identities, pg_restore)
            except RunbookError as exc:
                problems.append(exc.msg)
            if not problems and level == "restore":
                if self.check_mode:
                    verified["level"] = "archive"
                    notes.append("check mode: the scratch restore was skipped (it would create a database)")
                else:
                    problems += self._scratch_restore(manifest, identities, pg_restore)
        verified.update(ok=not problems, problems=problems)
        result = {"changed": False, "backup_id": manifest["id"], "manifest": manifest, "verified": verified,
                  "skipped": False, "pruned": [], "restored_db": None, "previous_db": None,
                  "duration_s": watch.elapsed,
                  "throughput_mib_s": _mib_s(manifest.get("raw_size", 0), watch.elapsed)}
        if problems:
            result["_fail_msg"] = "verify (%s) of backup %s of set %s failed: %s" % (
                verified["level"], manifest["id"], self.set, "; ".join(problems))
        else:
            result["msg"] = "backup %s of set %s verified at level %s" % (manifest["id"], self.set, verified["level"])
            if notes:
                result["msg"] += " (%s)" % "; ".join(notes)
        return result

    def _scratch_restore(self, manifest: dict, identities: t.Sequence[t.Any], pg_restore: str) -> t.List[str]:
        name = scratch_name(self.db, "verify")
        connection = self.conn.maintenance()
        try:
            cur = connection.cursor()
            create_database(cur, name, manifest.get("source", {}), None)
            try:
                self._restore_into(manifest, identities, pg_restore, name)
                return self._count_in(name, manifest)
            except RunbookError as exc:
                return ["restore into scratch database %s: %s" % (name, exc.msg)]
            finally:
                drop_database(cur, name)
        finally:
            connection.close()

    # ------------------------------------------------------------------ restore

    def restore(self) -> dict:
        watch = Stopwatch()
        mode = self.params.get("mode") or "swap"
        target = self.params.get("target_db") or self.db
        manifest = self._manifest()
        identities = self._identities(manifest)
        connection, server = self._server_facts()
        try:
            cur = connection.cursor()
            pg_restore = self._pg_restore(manifest, server["server_major"])
            exists = database_exists(cur, target)
            role = self.params.get("role")
            if role and not role_exists(cur, role):
                raise RunbookError('restore: role "%s" (option role, which pg_restore switches to) does not exist on %s; '
                                   'database "%s" was not touched' % (role, self.conn.where, target))
            previous = None
            if mode == "new" and exists:
                raise RunbookError('restore mode=new: database "%s" already exists on %s; choose another '
                                   "target_db or mode=swap/clean" % (target, self.conn.where))
            if mode == "clean" and not exists:
                raise RunbookError('restore mode=clean: database "%s" does not exist on %s' % (target, self.conn.where))
            if mode == "swap" and exists:
                previous = previous_name(target, manifest["id"])
                if database_exists(cur, previous):
                    raise RunbookError('restore mode=swap: database "%s" (kept by an earlier swap of this backup) '
                                       "already exists on %s; drop or rename it first" % (previous, self.conn.where))
                self._check_sessions(cur, target)
            verify_first = bool(self.params.get("verify_first", True))
            # clean writes into the live database: prove the whole backup in a separate pass first.
            # new and swap restore into a database of their own (dropped on failure) and the stream's
            # checksum is proven when it ends, before the target is touched: no second read needed.
            if verify_first and (mode == "clean" or self.check_mode):
                problems = self.repo.verify(manifest, identities)["problems"]
                if problems:
                    raise RunbookError("restore of backup %s refused: verification failed, database \"%s\" was not "
                                       "touched: %s" % (manifest["id"], target, "; ".join(problems)),
                                       backup_id=manifest["id"], verified={"level": "archive", "ok": False,
                                                                           "problems": problems})
            diff = {"before": {"database": target if exists else None},
                    "after": {"database": target, "from_backup": manifest["id"],
                              "previous_db": previous if (previous and self.params.get("keep_previous", True)) else None}}
            result = {"changed": True, "backup_id": manifest["id"], "manifest": manifest, "skipped": False,
                      "pruned": [], "restored_db": target, "previous_db": None, "diff": diff,
                      "verified": {"level": "archive" if verify_first else "none",
                                   "ok": True, "problems": []}}
            if self.check_mode:
                result.update(duration_s=watch.elapsed, throughput_mib_s=0.0,
                              previous_db=diff["after"]["previous_db"],
                              msg="would restore backup %s into database %s on %s (mode %s)"
                              % (manifest["id"], target, self.conn.where, mode))
                return result
            if mode == "clean":
                self._restore_into(manifest, identities, pg_restore, target, clean=True)
                result["verified"] = self._verified_counts(target, manifest)
            elif mode == "new":
                create_database(cur, target, manifest.get("source", {}), self._owner(cur, manifest))
                try:
                    self._restore_into(manifest, identities, pg_restore, target)
                    result["verified"] = self._verified_counts(target, manifest)
                except RunbookError as exc:
                    drop_database(cur, target)
                    raise RunbookError('restore of backup %s into new database "%s" failed (it was dropped again): %s'
                                       % (manifest["id"], target, exc.msg), **exc.details)
                except BaseException:
                    drop_database(cur, target)
                    raise
            else:
                try:
                    result["previous_db"] = self._swap(cur, manifest, identities, pg_restore, target, previous, result)
                except _NotTouched as exc:
                    raise RunbookError('restore of backup %s failed, database "%s" was not touched: %s'
                                       % (manifest["id"], target, exc.error.msg), **exc.error.details)
        finally:
            connection.close()
        result.update(duration_s=watch.elapsed, throughput_mib_s=_mib_s(manifest.get("raw_size", 0), watch.elapsed),
                      msg="restored backup %s into database %s on %s (mode %s)" % (manifest["id"], target,
                                                                                   self.conn.where, mode))
        return result

    def _owner(self, cur: t.Any, manifest: dict) -> t.Optional[str]:
        owner = manifest.get("source", {}).get("owner")
        if owner and not self.params.get("no_owner") and role_exists(cur, owner):
            return owner
        return None

    def _verified_counts(self, dbname: str, manifest: dict) -> dict:
        problems = self._count_in(dbname, manifest)
        if problems:
            raise RunbookError("restored database %s does not match backup %s: %s"
                               % (dbname, manifest["id"], "; ".join(problems)),
                               verified={"level": "restore", "ok": False, "problems": problems})
        return {"level": "restore", "ok": True, "problems": []}

    def _check_sessions(self, cur: t.Any, target: str) -> None:
        sessions = sessions_on(cur, target)
        if sessions and not self.params.get("terminate_connections"):
            raise RunbookError('restore mode=swap: database "%s" on %s has %d open session(s): %s; stop the clients '
                               "or set terminate_connections=true" % (target, self.conn.where, len(sessions),
                                                                      describe_sessions(sessions)),
                               sessions=sessions)

    def _swap(self, cur: t.Any, manifest: dict, identities: t.Sequence[t.Any], pg_restore: str, target: str,
              previous: t.Optional[str], result: dict) -> t.Optional[str]:
        temp = scratch_name(target, "restore")
        create_database(cur, temp, manifest.get("source", {}), self._owner(cur, manifest))
        try:
            try:
                self._restore_into(manifest, identities, pg_restore, temp)
                result["verified"] = self._verified_counts(temp, manifest)
            except RunbookError as exc:
                raise _NotTouched(exc)
            if previous is not None:
                self._check_sessions(cur, target)
                self._rename_out(cur, target, previous)
            try:
                cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(temp), quote_ident(target)))
            except Exception:
                if previous is not None:
                    cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(previous), quote_ident(target)))
                    cur.execute("ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(target))
                raise
        except BaseException:
            drop_database(cur, temp)
            raise
        if previous is None:
            return None
        if self.params.get("keep_previous", True):
            cur.execute("ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(previous))
            return previous
        drop_database(cur, previous)
        return None

    def _rename_out(self, cur: t.Any, target: str, previous: str) -> None:
        """Rename the live database out of the way; with terminate_connections, refuse new sessions,
        end the current ones and retry while a client races back in."""
        import psycopg
        terminate = bool(self.params.get("terminate_connections"))
        if terminate:
            cur.execute("ALTER DATABASE %s ALLOW_CONNECTIONS false" % quote_ident(target))
        try:
            for attempt in range(10):
                if terminate:
                    terminate_sessions(cur, target)
                try:
                    cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(target), quote_ident(previous)))
                    return
                except psycopg.errors.ObjectInUse:
                    if not terminate or attempt == 9:
                        sessions = sessions_on(cur, target)
                        raise RunbookError('restore mode=swap: cannot rename database "%s" on %s: open session(s): '
                                           "%s" % (target, self.conn.where, describe_sessions(sessions)),
                                           sessions=sessions)
                    time.sleep(0.2)
        except BaseException:
            if terminate:
                cur.execute("ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(target))
            raise


class _NotTouched(Exception):
    """A swap failed before the target was renamed: the target is as it was."""

    def __init__(self, error: RunbookError) -> None:
        super().__init__(error.msg)
        self.error = error


class _CountThread:
    """Exact row counts in the exported snapshot, taken on the snapshot's own connection while
    pg_dump streams (the connection is not used by anything else meanwhile)."""

    def __init__(self, cur: t.Any, tables: t.Sequence[str]) -> None:
        self.cur = cur
        self.tables = list(tables)
        self.counts: t.Dict[str, int] = {}
        self.error: t.Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.counts = count_rows(self.cur, self.tables)
        except BaseException as exc:  # pylint: disable=broad-except
            self.error = exc

    def result(self, db: str, where: str) -> t.Dict[str, int]:
        self.thread.join()
        if self.error is not None:
            raise StreamError("row count", 'counting rows of database "%s" on %s: %s' % (db, where, self.error))
        return self.counts


def _latest_id(repo: t.Any, set_name: str) -> t.Optional[str]:
    latest = repo.latest(KIND, set_name)
    return latest["id"] if latest else None


def _mib_s(raw: int, seconds: float) -> float:
    return round(raw / 1048576.0 / seconds, 1) if seconds > 0 else 0.0


__all__ = ["PgBackup", "connection_argspec", "KIND"]
