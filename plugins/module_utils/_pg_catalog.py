# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What we ask a PostgreSQL server and change in its catalog, over a psycopg cursor: database facts,
the tables pg_dump would dump and their exact row counts, databases (exists, create, drop), roles
and sessions, and names that fit PostgreSQL's 63-byte identifier limit.

Identifiers are always quoted (:func:`quote_ident`); values are query parameters or quoted
literals, so a name is never SQL.
"""

from __future__ import annotations

import secrets
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._names import PG_MAX_NAME_BYTES
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import import_psycopg, last_line

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

Session = t.Dict[str, t.Any]

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


def quote_ident(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def quote_literal(value: str) -> str:
    return "'%s'" % value.replace("'", "''")


def _one(cur: "psycopg.Cursor[t.Any]") -> t.Any:
    """The first row of the last query (our queries always return one)."""
    row = cur.fetchone()
    if row is None:
        raise RunbookError("the server returned no row for %s" % (cur.query or "a query"))
    return row


# --------------------------------------------------------------------------- one database

def server_major(cur: "psycopg.Cursor[t.Any]") -> int:
    """The server's major version (15 for 15.4)."""
    cur.execute("SELECT current_setting('server_version_num')::int")
    return int(_one(cur)[0]) // 10000


def database_facts(cur: "psycopg.Cursor[t.Any]") -> t.Dict[str, t.Any]:
    """Version, size, encoding, locale and owner of the database the cursor is connected to."""
    cur.execute(_FACTS_SQL)
    version, version_num, size, encoding, collate, ctype, owner = _one(cur)
    return {"server_version": version, "server_version_num": version_num, "server_major": version_num // 10000,
            "database_size": size, "encoding": encoding, "collate": collate, "ctype": ctype, "owner": owner}


def list_tables(cur: "psycopg.Cursor[t.Any]") -> t.List[t.Tuple[str, str]]:
    cur.execute(_TABLES_SQL)
    return [(row[0], row[1]) for row in cur.fetchall()]


def count_rows(cur: "psycopg.Cursor[t.Any]", qualified: t.Sequence[str]) -> t.Dict[str, int]:
    """Exact row counts of ``schema.table`` names (the table itself, not its partitions' parents)."""
    counts = {}
    for name in qualified:
        schema, table = name.split(".", 1)
        cur.execute("SELECT count(*) FROM ONLY %s.%s" % (quote_ident(schema), quote_ident(table)))
        counts[name] = int(_one(cur)[0])
    return counts


def compare_counts(expected: t.Mapping[str, int], actual: t.Mapping[str, int], where: str) -> t.List[str]:
    problems = []
    for name, rows in sorted(expected.items()):
        if name not in actual:
            problems.append("table %s is missing from %s" % (name, where))
        elif actual[name] != rows:
            problems.append("table %s has %d rows in %s, the backup's manifest says %d" % (name, actual[name], where, rows))
    return problems


# --------------------------------------------------------------------------- databases, roles, sessions

def database_exists(cur: "psycopg.Cursor[t.Any]", name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return cur.fetchone() is not None


def role_exists(cur: "psycopg.Cursor[t.Any]", name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    return cur.fetchone() is not None


def sessions_on(cur: "psycopg.Cursor[t.Any]", name: str) -> t.List[Session]:
    cur.execute("SELECT pid, usename, application_name, client_addr::text, state FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid", (name,))
    return [{"pid": r[0], "user": r[1], "application": r[2] or "", "client": r[3] or "local", "state": r[4] or ""}
            for r in cur.fetchall()]


def describe_sessions(sessions: t.Sequence[Session]) -> str:
    return ", ".join("pid %d (user %s, application %r, from %s, %s)"
                     % (s["pid"], s["user"], s["application"], s["client"], s["state"]) for s in sessions)


def terminate_sessions(cur: "psycopg.Cursor[t.Any]", name: str) -> int:
    cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()", (name,))
    return int(_one(cur)[0])


def create_database(cur: "psycopg.Cursor[t.Any]", name: str, facts: t.Mapping[str, t.Any],
                    owner: t.Optional[str]) -> None:
    """CREATE DATABASE from template0 with the source's encoding and locale (when this server has it)."""
    psycopg = import_psycopg()
    base = "CREATE DATABASE %s TEMPLATE template0" % quote_ident(name)
    if owner:
        base += " OWNER %s" % quote_ident(owner)
    encoding = facts.get("encoding")
    attempts = []
    if encoding and facts.get("collate") and facts.get("ctype"):
        attempts.append(base + " ENCODING %s LC_COLLATE %s LC_CTYPE %s" % (
            quote_literal(encoding), quote_literal(facts["collate"]), quote_literal(facts["ctype"])))
    if encoding:
        attempts.append(base + " ENCODING %s" % quote_literal(encoding))
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
    raise RunbookError('cannot create database "%s": %s' % (name, last_line(str(last))))


def drop_database(cur: "psycopg.Cursor[t.Any]", name: str) -> None:
    cur.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name))


# The comment that marks a database as a scratch restore (a drill's copy): only such a database
# is ever dropped by ``pg_backup state=dropped``.
SCRATCH_COMMENT_PREFIX = "runbook.ops scratch restore"


def mark_scratch(cur: "psycopg.Cursor[t.Any]", name: str, backup_id: str) -> None:
    # COMMENT takes no bind parameters: the text is a quoted literal (backup ids are plain already).
    text = "%s of backup %s" % (SCRATCH_COMMENT_PREFIX, backup_id)
    cur.execute("COMMENT ON DATABASE %s IS '%s'" % (quote_ident(name), text.replace("'", "''")))


def database_comment(cur: "psycopg.Cursor[t.Any]", name: str) -> t.Optional[str]:
    cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,))
    row = cur.fetchone()
    return None if row is None else (row[0] or "")


def rename_database(cur: "psycopg.Cursor[t.Any]", name: str, new_name: str) -> None:
    cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(name), quote_ident(new_name)))


def allow_connections(cur: "psycopg.Cursor[t.Any]", name: str, allowed: bool) -> None:
    cur.execute("ALTER DATABASE %s ALLOW_CONNECTIONS %s" % (quote_ident(name), "true" if allowed else "false"))


# --------------------------------------------------------------------------- names

def _head(name: str, room: int) -> str:
    """The first ``room`` bytes of ``name`` in UTF-8, never cutting a character."""
    return name.encode("utf-8")[:max(0, room)].decode("utf-8", "ignore")


def scratch_name(base: str, tag: str) -> str:
    """``<base>_<tag>_<random>`` within PostgreSQL's 63-byte identifier limit (counted in bytes)."""
    suffix = "_%s_%s" % (tag, secrets.token_hex(3))
    return _head(base, PG_MAX_NAME_BYTES - len(suffix)) + suffix


def previous_name(target: str, backup_id: str) -> str:
    """``<target>_pre_<backup_id>``; a long target name is shortened (never the backup id, which
    says what the previous database was replaced by) to fit PostgreSQL's 63-byte limit."""
    suffix = "_pre_%s" % backup_id
    return _head(target, PG_MAX_NAME_BYTES - len(suffix.encode())) + suffix
