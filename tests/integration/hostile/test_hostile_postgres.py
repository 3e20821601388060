"""Hostile input against ``pg_backup``: database and role names that libpq would read as connection
settings, names PostgreSQL would truncate, control characters, hostile connection options and
numbers, unusable spool directories and identity files.

Every case ends in a clean ``fail_json`` that leaks no password, or - where PostgreSQL takes the
name as it is - succeeds with a database literally of that name and nothing else touched. The
first tests prove that a database name never steers a client program to another server or
another database (a second real server with password authentication and ``log_connections``
watches for connections).
"""

from __future__ import annotations

import os
import subprocess
import typing as t
import uuid
from pathlib import Path

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import PgConnection, PgConnectionOptions
from tests.harness.collection import run_module
from tests.harness.hostile import CONNINFO, CONTROL, TOO_LONG, TRAVERSAL, assert_clean_failure, tree_snapshot
from tests.harness.services import PostgresServer
from tests.harness.tasks import validated
from tests.integration.test_pg_backup_support import databases, fingerprint

QUOTES = ["it's", 'say "hi"', "back\\slash", "-flag", "semi;colon"]
# 64 bytes: one more than PostgreSQL keeps (ASCII, and two-byte UTF-8 characters).
BOUNDARY = ["y" * 64, "\u00e9" * 32]
REFUSED_NAMES = CONTROL + TOO_LONG + BOUNDARY
LITERAL_NAMES = TRAVERSAL + CONNINFO + QUOTES
SMALL_SQL = """
CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;
CREATE TABLE "Odd Name" (n int);
INSERT INTO "Odd Name" VALUES (1), (2);
"""


def _ident(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def _create(pg: t.Any, name: str, sql: str = SMALL_SQL) -> None:
    pg.psql("CREATE DATABASE %s" % _ident(name))
    if sql:
        _psql_in(pg, name, sql)


def _psql_in(pg: t.Any, name: str, sql: str) -> str:
    """psql into a database whatever its name: the name goes in a quoted connection string."""
    from ansible_collections.runbook.ops.plugins.module_utils._names import conninfo
    return pg.psql(sql, db=conninfo({"dbname": name}))


def _drop(pg: t.Any, name: str) -> None:
    pg.psql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % _ident(name))


def _args(pg: t.Any, repository: dict, db: str, **extra: t.Any) -> dict:
    args = dict(pg.login)
    args.update(repository)
    args["db"] = db
    args.update(extra)
    return args


@pytest.fixture(scope="module")
def stored(postgres, tmp_path_factory) -> dict:
    """A small database and one unencrypted backup of it in a file repository."""
    db = "hostile_%s" % uuid.uuid4().hex[:6]
    _create(postgres, db)
    repository = {"repository": "file://%s" % (tmp_path_factory.mktemp("hostile-pg") / "repo")}
    result = run_module("pg_backup", _args(postgres, repository, db, compression="none"))
    assert not result.get("failed"), result
    return {"db": db, "repository": repository, "backup_id": result["backup_id"],
            "fingerprint": fingerprint(postgres, db)}


# --------------------------------------------------------------------------- a name is never a connection string

class ConnectionLog:
    """A second server with password authentication that logs every connection it receives."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        server.psql("ALTER SYSTEM SET log_connections = on")
        server.psql("SELECT pg_reload_conf()")
        server.psql("SELECT 1")  # logged once the reload is in effect: proves the log is watched
        self.offset = 0

    def text(self) -> str:
        return self.server.process.log_file.read_bytes()[self.offset:].decode("utf-8", "replace")

    def mark(self) -> None:
        assert "connection received" in self.server.process.log_file.read_text(errors="replace"), \
            "the second server does not log connections"
        self.offset = self.server.process.log_file.stat().st_size

    def assert_untouched(self) -> None:
        seen = self.text()
        assert "connection received" not in seen, "the second server was contacted:\n%s" % seen[-3000:]


def test_conninfo_in_a_database_name_never_reaches_another_server(postgres, stored, service_factory):
    # Same superuser password as the main server: a connection there would succeed and write data.
    second = service_factory.add(PostgresServer(service_factory.workdir("pg-second"), password=postgres.password))
    second.psql("CREATE DATABASE x")
    watch = ConnectionLog(second)
    hostile = "host=127.0.0.1 port=%d dbname=x" % second.port
    before = databases(postgres)
    watch.mark()

    restored = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="restore",
                                             mode="new", target_db=hostile))
    watch.assert_untouched()
    assert not restored.get("failed"), restored
    assert restored["restored_db"] == hostile
    assert fingerprint_of(postgres, hostile) == stored["fingerprint"][1]
    assert sorted(databases(postgres)) == sorted(before + [hostile])
    assert second.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db="x") == "0"
    watch.mark()  # that check was a connection of ours

    # verify level=restore: the scratch database is named from db, which holds the same text.
    backup = run_module("pg_backup", _args(postgres, {"repository": stored["repository"]["repository"]}, hostile,
                                           compression="none"))
    assert not backup.get("failed"), backup
    assert backup["manifest"]["set"] == hostile and backup["manifest"]["source"]["database"] == hostile
    verified = run_module("pg_backup", _args(postgres, stored["repository"], hostile, state="verify", level="restore"))
    watch.assert_untouched()
    assert not verified.get("failed"), verified
    assert verified["verified"][0]["ok"] and verified["verified"][0]["level"] == "restore"
    assert sorted(databases(postgres)) == sorted(before + [hostile])
    _drop(postgres, hostile)


def fingerprint_of(pg: t.Any, name: str) -> dict:
    """Table checksums of a database whatever its name (``fingerprint`` passes names to psql -d as is)."""
    tables = _psql_in(pg, name, "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1").splitlines()
    return {table: _psql_in(pg, name, "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY "
                                      "t::text)), '') FROM %s t" % table) for table in tables}


def test_dbname_in_target_db_never_writes_into_that_database(postgres, stored):
    other = "other_%s" % uuid.uuid4().hex[:6]
    _create(postgres, other, "CREATE TABLE precious (n int); INSERT INTO precious VALUES (42);")
    before = fingerprint(postgres, other)
    hostile = "dbname=%s" % other
    try:
        for mode in ("new", "clean", "swap"):
            result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="restore",
                                                   mode=mode, target_db=hostile, keep_previous=False))
            assert not result.get("failed"), (mode, result)
            assert result["restored_db"] == hostile
            assert fingerprint(postgres, other) == before, "restore mode=%s wrote into %s" % (mode, other)
            assert fingerprint_of(postgres, hostile) == stored["fingerprint"][1]
        # no temporary database of the swap and no kept previous one (keep_previous=false) remain
        assert [d for d in databases(postgres) if d.startswith(hostile)] == [hostile]
    finally:
        _drop(postgres, hostile)
        _drop(postgres, other)


def test_psycopg_connections_take_the_name_literally(postgres):
    """psycopg passes ``dbname`` inside a quoted connection string: libpq does not expand it."""
    name = "dbname=postgres host=127.0.0.1 port=1"
    _create(postgres, name, "")
    try:
        options = PgConnectionOptions.from_params(validated("pg_backup", dict(postgres.login, db=name)))
        connection = PgConnection(options, "pg_backup").connect(name)
        try:
            assert connection.execute("SELECT current_database()").fetchone()[0] == name
            assert connection.info.port == postgres.port
        finally:
            connection.close()
    finally:
        _drop(postgres, name)


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("name", REFUSED_NAMES + LITERAL_NAMES)
def test_db_of_a_backup(postgres, tmp_path, name):
    repo = tmp_path / "repo"
    before = databases(postgres)
    result = run_module("pg_backup", _args(postgres, {"repository": "file://%s" % repo}, name))
    msg = assert_clean_failure(result, secrets=[postgres.password])
    if name in REFUSED_NAMES:
        assert "db" in msg
    assert not list(repo.rglob("manifest.json")) if repo.exists() else True
    assert databases(postgres) == before


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_target_db_refused(postgres, stored, name):
    before = databases(postgres)
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="restore", mode="new",
                                           target_db=name))
    assert "target_db" in assert_clean_failure(result, secrets=[postgres.password])
    assert databases(postgres) == before


@pytest.mark.parametrize("name", LITERAL_NAMES)
def test_target_db_taken_literally(postgres, stored, name):
    before = databases(postgres)
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="restore", mode="new",
                                           target_db=name))
    try:
        assert not result.get("failed"), result
        assert result["restored_db"] == name
        assert sorted(databases(postgres)) == sorted(before + [name])
        assert fingerprint_of(postgres, name) == stored["fingerprint"][1]
        assert fingerprint(postgres, stored["db"]) == stored["fingerprint"]
    finally:
        _drop(postgres, name)


def test_swap_keeps_a_hostile_target_under_a_literal_name(postgres, stored):
    name = 'we"ird=1 \'x\''
    _create(postgres, name, "CREATE TABLE old_stuff (n int); INSERT INTO old_stuff VALUES (7);")
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="restore",
                                           target_db=name))
    try:
        assert not result.get("failed"), result
        assert result["previous_db"] == "%s_pre_%s" % (name, stored["backup_id"])
        assert _psql_in(postgres, result["previous_db"], "SELECT n FROM old_stuff") == "7"
        assert fingerprint_of(postgres, name) == stored["fingerprint"][1]
    finally:
        _drop(postgres, name)
        if result.get("previous_db"):
            _drop(postgres, result["previous_db"])


@pytest.mark.parametrize("name", REFUSED_NAMES + LITERAL_NAMES)
def test_role(postgres, stored, name):
    before = databases(postgres)
    target = "role_%s" % uuid.uuid4().hex[:6]
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="restore", mode="new",
                                           target_db=target, role=name))
    msg = assert_clean_failure(result, secrets=[postgres.password])
    assert "role" in msg
    assert databases(postgres) == before


@pytest.mark.parametrize("value", REFUSED_NAMES + LITERAL_NAMES + ["..%2f..", "x" * 201])
def test_backup_id(postgres, stored, value):
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           level="checksum", backup_id=value))
    msg = assert_clean_failure(result, secrets=[postgres.password])
    assert "backup_id" in msg or "not found" in msg


@pytest.mark.parametrize("value", REFUSED_NAMES + LITERAL_NAMES)
def test_set(postgres, stored, tmp_path, value):
    outside = tree_snapshot(Path(stored["repository"]["repository"][len("file://"):]).parent)
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           level="checksum", set=value))
    assert_clean_failure(result, secrets=[postgres.password])
    assert tree_snapshot(Path(stored["repository"]["repository"][len("file://"):]).parent) == outside


@pytest.mark.parametrize("value", CONTROL + TOO_LONG + BOUNDARY + CONNINFO + QUOTES)
def test_login_user(postgres, stored, value):
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           login_user=value))
    msg = assert_clean_failure(result, secrets=[postgres.password])
    assert "login_user" in msg or "cannot connect" in msg


@pytest.mark.parametrize("value", CONTROL + CONNINFO + QUOTES + ["a,b", "x" * 300, "host name"])
def test_login_host(postgres, stored, value):
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           login_host=value))
    assert "login_host" in assert_clean_failure(result, secrets=[postgres.password])


@pytest.mark.parametrize("value", CONTROL + CONNINFO + ["relative/dir", "/a,/b"])
def test_login_unix_socket(postgres, stored, value):
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           login_unix_socket=value))
    msg = assert_clean_failure(result, secrets=[postgres.password])
    assert "login_unix_socket" in msg or "cannot connect" in msg


def test_login_unix_socket_that_is_not_a_socket_directory(postgres, stored):
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           login_unix_socket="/etc"))
    assert "cannot connect" in assert_clean_failure(result, secrets=[postgres.password])


@pytest.mark.parametrize("value", CONTROL)
def test_ca_cert_refused(postgres, stored, value):
    result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           ca_cert=value))
    assert "ca_cert" in assert_clean_failure(result, secrets=[postgres.password])


@pytest.mark.parametrize("value", CONNINFO)
def test_ca_cert_taken_literally(postgres, stored, value):
    # With verify-full the root certificate is required; the server here has no TLS, so the failure
    # is about TLS, never a connection with other settings.
    strict = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                           ca_cert=value, ssl_mode="verify-full"))
    assert "cannot connect" in assert_clean_failure(strict, secrets=[postgres.password])
    # With prefer a missing root certificate is not needed: the name is only ever a file name.
    relaxed = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                            ca_cert=value))
    assert not relaxed.get("failed"), relaxed


def test_patterns_with_control_characters(postgres, stored, tmp_path):
    for option in ("schemas", "tables", "exclude_tables", "exclude_schemas", "exclude_table_data"):
        result = run_module("pg_backup", _args(postgres, {"repository": "file://%s" % (tmp_path / "repo")},
                                               stored["db"], **{option: ["pub\x00lic"]}))
        assert option in assert_clean_failure(result, secrets=[postgres.password])


def test_password_a_passfile_cannot_hold(postgres, stored):
    for password in ("line\nbreak-secret", "nul\x00byte-secret"):
        result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="verify",
                                               login_password=password))
        msg = assert_clean_failure(result, secrets=[password, "break-secret", "byte-secret"])
        assert "login_password" in msg


# --------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("option, value", [
    ("jobs", 0), ("jobs", -1), ("jobs", 100000),
    ("connect_timeout", 0), ("connect_timeout", -1),
    ("login_port", 0), ("login_port", -1), ("login_port", 70000),
    ("compression_level", 0), ("compression_level", -1), ("compression_level", 23),
    ("compression_threads", -1), ("compression_threads", 100000),
])
def test_numbers_out_of_range(postgres, stored, tmp_path, option, value):
    extra = {"format": "directory"} if option == "jobs" else {}
    result = run_module("pg_backup", _args(postgres, {"repository": "file://%s" % (tmp_path / "repo")},
                                           stored["db"], **dict(extra, **{option: value})))
    assert option in assert_clean_failure(result, secrets=[postgres.password])
    assert not (tmp_path / "repo").exists()


def test_gzip_level_out_of_range(postgres, stored, tmp_path):
    result = run_module("pg_backup", _args(postgres, {"repository": "file://%s" % (tmp_path / "repo")},
                                           stored["db"], compression="gzip", compression_level=10))
    assert "compression_level" in assert_clean_failure(result, secrets=[postgres.password])


def test_restore_jobs_out_of_range(postgres, stored):
    for jobs in (0, -3):
        result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state="restore",
                                               mode="new", target_db="never_created", jobs=jobs))
        assert "jobs" in assert_clean_failure(result, secrets=[postgres.password])
    assert "never_created" not in databases(postgres)


# --------------------------------------------------------------------------- spool_dir and identity files

class ReadOnlyDir:
    """A directory nobody may write to: a read-only tmpfs when we may mount (root ignores
    permission bits), otherwise mode 0500."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False
        path.mkdir()
        if os.geteuid() == 0:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                                  capture_output=True, check=False)
            self.mounted = proc.returncode == 0
        if not self.mounted:
            path.chmod(0o500)

    @property
    def enforced(self) -> bool:
        return self.mounted or os.geteuid() != 0

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=False)
        else:
            self.path.chmod(0o700)


@pytest.mark.parametrize("kind", ["file", "under_a_file", "read_only"])
@pytest.mark.parametrize("state", ["backup", "restore"])
def test_spool_dir_unusable(postgres, stored, tmp_path, kind, state):
    readonly = None
    if kind == "read_only":
        readonly = ReadOnlyDir(tmp_path / "ro")
        spool = readonly.path
    else:
        (tmp_path / "afile").write_text("not a directory")
        spool = tmp_path / "afile" if kind == "file" else tmp_path / "afile" / "sub"
    try:
        if state == "backup":
            args = _args(postgres, {"repository": "file://%s" % (tmp_path / "repo")}, stored["db"],
                         format="directory", jobs=2, spool_dir=str(spool), compression="none")
        else:
            args = _args(postgres, stored["repository"], stored["db"], state="restore", mode="new", jobs=2,
                         target_db="spool_%s" % uuid.uuid4().hex[:6], spool_dir=str(spool))
        before = databases(postgres)
        result = run_module("pg_backup", args)
        if readonly is not None and not readonly.enforced:
            # root without mount rights: the permission bits do not bind; it must still clean up.
            assert not result.get("failed"), result
            assert list(spool.iterdir()) == []
            if state == "restore":
                _drop(postgres, args["target_db"])
        else:
            assert "spool_dir" in assert_clean_failure(result, secrets=[postgres.password])
            assert databases(postgres) == before
            assert not list((tmp_path / "repo").rglob("manifest.json")) if (tmp_path / "repo").exists() else True
    finally:
        if readonly is not None:
            readonly.close()


def test_encryption_identity_is_a_binary_file(postgres, stored, tmp_path):
    binary = tmp_path / "identity.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    for state in ("verify", "restore"):
        result = run_module("pg_backup", _args(postgres, stored["repository"], stored["db"], state=state,
                                               mode="new", target_db="never_created_id",
                                               encryption_identity=str(binary)))
        assert "encryption_identity" in assert_clean_failure(result, secrets=[postgres.password])
    assert "never_created_id" not in databases(postgres)
