"""Pure logic of _postgres: pg_dump pattern matching, argv and environment building, version checks."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._postgres import (
    ClientEnv, Conn, choose_binary, compare_counts, dump_argv, matches, parse_client_version, passfile_escape,
    previous_name, quote_ident, restore_argv, scratch_name, select_tables)

LOGIN = {"login_host": "db.example.internal", "login_port": 6543, "login_user": "backup",
         "login_password": "s3cr:et\\pw", "ssl_mode": "require", "ca_cert": "/etc/ca.pem", "connect_timeout": 7}


@pytest.mark.parametrize("pattern, schema, name, expected", [
    ("accounts", "public", "accounts", True),
    ("ACCOUNTS", "public", "accounts", True),          # unquoted folds to lower case
    ('"ACCOUNTS"', "public", "accounts", False),       # quoted is exact
    ('"Mixed Case"', "audit", "Mixed Case", True),
    ("audit.*", "audit", "events", True),
    ("audit.*", "public", "events", False),
    ("acc*", "public", "accounts", True),
    ("acc?unts", "public", "accounts", True),
    ("acc?unts", "public", "acc__unts", False),
    ("a.b.c", "b", "c", True),                          # database qualifier ignored: last dot splits
    ("pub.accounts", "public", "accounts", False),
    ('"we.ird"', "public", "we.ird", True),             # a quoted dot is part of the name
])
def test_table_patterns(pattern, schema, name, expected):
    assert matches(pattern, schema, name) is expected


def test_schema_patterns():
    assert matches("aud*", "audit")
    assert not matches("aud*", "public")
    assert matches("Audit", "audit")


TABLES = [("audit", "events"), ("audit", "Mixed Case"), ("public", "accounts"), ("public", "sessions")]


def test_select_tables_like_pg_dump():
    assert select_tables(TABLES, {}) == (["audit.events", "audit.Mixed Case", "public.accounts", "public.sessions"], [])
    assert select_tables(TABLES, {"schemas": ["public"]})[0] == ["public.accounts", "public.sessions"]
    assert select_tables(TABLES, {"exclude_schemas": ["public"]})[0] == ["audit.events", "audit.Mixed Case"]
    # -t wins over -n, as in pg_dump
    assert select_tables(TABLES, {"tables": ["accounts"], "schemas": ["audit"]})[0] == ["public.accounts"]
    assert select_tables(TABLES, {"exclude_tables": ["audit.*", "sessions"]})[0] == ["public.accounts"]
    with_data, schema_only = select_tables(TABLES, {"exclude_table_data": ["sessions"], "schemas": ["public"]})
    assert with_data == ["public.accounts"] and schema_only == ["public.sessions"]


def test_dump_argv_has_filters_and_no_secret():
    argv = dump_argv("/usr/bin/pg_dump", "custom", "00000003-1", {"schemas": ["public"], "exclude_table_data": ["logs*"]})
    assert argv[:4] == ["/usr/bin/pg_dump", "--format=custom", "--compress=0", "--no-password"]
    assert "--snapshot=00000003-1" in argv and "--schema=public" in argv and "--exclude-table-data=logs*" in argv
    directory = dump_argv("pg_dump", "directory", None, {}, jobs=3, path="/spool/dump")
    assert "--jobs=3" in directory and "--file=/spool/dump" in directory
    assert not any(LOGIN["login_password"] in a for a in argv + directory)


def test_restore_argv():
    stream = restore_argv("pg_restore", "custom", "target", clean=True, single_transaction=True, no_owner=True,
                          role="owner")
    assert "--dbname=target" in stream and "--clean" in stream and "--if-exists" in stream
    assert "--single-transaction" in stream and "--no-owner" in stream and "--role=owner" in stream
    assert "--exit-on-error" in stream and not any(a.startswith("--jobs") for a in stream)
    parallel = restore_argv("pg_restore", "directory", "t", jobs=4, path="/spool/x", single_transaction=True)
    assert "--jobs=4" in parallel and "--format=directory" in parallel and parallel[-1] == "/spool/x"
    assert "--single-transaction" not in parallel  # pg_restore refuses it with --jobs
    check = restore_argv("pg_restore", "custom", None)
    assert "--file=/dev/null" in check and not any(a.startswith("--dbname") for a in check)


def test_client_env_uses_a_private_passfile():
    conn = Conn(LOGIN)
    with ClientEnv(conn) as client:
        env = client.env("shop")
        assert LOGIN["login_password"] not in "".join(env.values())
        assert "PGPASSWORD" not in env
        assert env["PGHOST"] == "db.example.internal" and env["PGPORT"] == "6543" and env["PGUSER"] == "backup"
        assert env["PGSSLMODE"] == "require" and env["PGSSLROOTCERT"] == "/etc/ca.pem"
        assert env["PGDATABASE"] == "shop" and env["PGCONNECT_TIMEOUT"] == "7"
        assert "PATH" in env  # extends the environment, never replaces it
        path = env["PGPASSFILE"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == "*:*:*:*:s3cr\\:et\\\\pw\n"
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def test_client_env_without_password_has_no_passfile():
    conn = Conn(dict(LOGIN, login_password="", login_host="", login_unix_socket="/run/postgresql"))
    with ClientEnv(conn) as client:
        env = client.env("shop")
        assert "PGPASSFILE" not in env or env["PGPASSFILE"] == os.environ.get("PGPASSFILE")
        assert env["PGHOST"] == "/run/postgresql"
    assert "unix socket /run/postgresql" in conn.where


def test_psycopg_kwargs():
    kwargs = Conn(LOGIN).kwargs("shop")
    assert kwargs["host"] == "db.example.internal" and kwargs["port"] == 6543 and kwargs["dbname"] == "shop"
    assert kwargs["sslmode"] == "require" and kwargs["sslrootcert"] == "/etc/ca.pem" and kwargs["connect_timeout"] == 7
    assert "host" not in Conn(dict(LOGIN, login_host="")).kwargs("x")


def test_passfile_escape():
    assert passfile_escape("a:b\\c") == "a\\:b\\\\c"


def test_quote_ident():
    assert quote_ident('we"ird') == '"we""ird"'


def test_parse_client_version():
    assert parse_client_version("pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)") == (15, 14)
    assert parse_client_version("pg_restore (PostgreSQL) 17beta1") == (17, 0)
    with pytest.raises(RunbookError):
        parse_client_version("something else")


def test_choose_binary():
    found = [("/usr/lib/postgresql/14/bin/pg_dump", (14, 9)), ("/usr/lib/postgresql/16/bin/pg_dump", (16, 2)),
             ("/usr/lib/postgresql/15/bin/pg_dump", (15, 5))]
    assert choose_binary("pg_dump", 15, found, "h:5432")[0].endswith("/15/bin/pg_dump")
    assert choose_binary("pg_dump", 13, found, "h:5432")[0].endswith("/14/bin/pg_dump")
    with pytest.raises(RunbookError) as too_old:
        choose_binary("pg_dump", 17, found, "db:5432")
    assert "too old for the PostgreSQL 17 server on db:5432" in too_old.value.msg
    with pytest.raises(RunbookError) as missing:
        choose_binary("pg_dump", 15, [], "db:5432")
    assert "pg_dump not found" in missing.value.msg and "postgresql-client-15" in missing.value.msg


def test_names_fit_postgres_limits():
    name = scratch_name("x" * 80, "restore")
    assert len(name) <= 63 and "_restore_" in name
    assert scratch_name("shop", "verify") != scratch_name("shop", "verify")
    assert previous_name("shop", "20260131T120000.000Z-abc123") == "shop_pre_20260131T120000.000Z-abc123"
    long_name = previous_name("a" * 40, "20260131T120000.000Z-abc123")
    assert len(long_name.encode()) == 63 and long_name.endswith("_pre_20260131T120000.000Z-abc123")
    assert len(previous_name("ä" * 40, "20260131T120000.000Z-abc123").encode()) <= 63


def test_compare_counts():
    expected = {"public.a": 3, "public.b": 1, "public.c": 0}
    problems = compare_counts(expected, {"public.a": 3, "public.b": 2}, "database x")
    assert problems == ["table public.b has 2 rows in database x, the backup's manifest says 1",
                        "table public.c is missing from database x"]
    assert compare_counts(expected, dict(expected), "x") == []
