"""Pure logic of the PostgreSQL helpers (_pg_connection, _pg_tools, _pg_catalog, _pg_backup): pg_dump
pattern matching, argv and environment building, the password file, option checks, version checks."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._pg_backup import PgBackupOptions
from ansible_collections.runbook.ops.plugins.module_utils._pg_catalog import (
    compare_counts, previous_name, quote_ident, scratch_name)
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (
    PassFile, PgConnection, PgConnectionOptions, PgEndpoint, passfile_lines, sweep_passfiles)
from ansible_collections.runbook.ops.plugins.module_utils._pg_tools import (
    ClientEnv, DumpFilters, RestoreFlags, choose_binary, dump_argv, matches, parse_client_version, restore_argv)
from tests.harness.tasks import InvalidParams, make_task, validated

LOGIN = {"login_host": "db.example.internal", "login_port": 6543, "login_user": "backup",
         "login_password": "s3cr:et\\pw", "ssl_mode": "require", "ca_cert": "/etc/ca.pem", "connect_timeout": 7}


def options(**extra):
    """pg_backup's options as a real run builds them (argument spec defaults, then from_params)."""
    return make_task("pg_backup", PgBackupOptions.from_params, dict(LOGIN, **dict({"db": "shop"}, **extra))).options


def conn(**login):
    """A PgConnection for LOGIN with ``login`` changed, built through pg_backup's argument spec."""
    params = validated("pg_backup", dict(dict(LOGIN, db="shop"), **login))
    return PgConnection(PgConnectionOptions.from_params(params), "pg_backup")


def filters(**given):
    return DumpFilters(**{key: given.get(key, []) for key in
                          ("schemas", "exclude_schemas", "tables", "exclude_tables", "exclude_table_data")})


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
    assert filters().select(TABLES) == (["audit.events", "audit.Mixed Case", "public.accounts", "public.sessions"], [])
    assert filters(schemas=["public"]).select(TABLES)[0] == ["public.accounts", "public.sessions"]
    assert filters(exclude_schemas=["public"]).select(TABLES)[0] == ["audit.events", "audit.Mixed Case"]
    # -t wins over -n, as in pg_dump
    assert filters(tables=["accounts"], schemas=["audit"]).select(TABLES)[0] == ["public.accounts"]
    assert filters(exclude_tables=["audit.*", "sessions"]).select(TABLES)[0] == ["public.accounts"]
    with_data, schema_only = filters(exclude_table_data=["sessions"], schemas=["public"]).select(TABLES)
    assert with_data == ["public.accounts"] and schema_only == ["public.sessions"]


def test_filters_come_from_the_options():
    opts = options(schemas=["public"], exclude_table_data=["logs*"])
    assert opts.filters == filters(schemas=["public"], exclude_table_data=["logs*"])
    assert opts.filters.given() == {"schemas": ["public"], "exclude_table_data": ["logs*"]}


def test_dump_argv_has_filters_and_no_secret():
    argv = dump_argv("/usr/bin/pg_dump", fmt="custom", snapshot="00000003-1",
                     filters=filters(schemas=["public"], exclude_table_data=["logs*"]), dbname_arg="--dbname=dbname='shop'")
    assert argv[:5] == ["/usr/bin/pg_dump", "--format=custom", "--compress=0", "--no-password", "--dbname=dbname='shop'"]
    assert "--snapshot=00000003-1" in argv and "--schema=public" in argv and "--exclude-table-data=logs*" in argv
    directory = dump_argv("pg_dump", fmt="directory", filters=filters(), dbname_arg="--dbname=x", jobs=3,
                          path="/spool/dump")
    assert "--jobs=3" in directory and "--file=/spool/dump" in directory
    assert not any(LOGIN["login_password"] in a for a in argv + directory)


def test_restore_argv():
    stream = restore_argv("pg_restore", fmt="custom", dbname_arg="--dbname=dbname='target'",
                          flags=RestoreFlags(clean=True, no_owner=True, role="owner"))
    assert "--dbname=dbname='target'" in stream and "--clean" in stream and "--if-exists" in stream
    assert "--single-transaction" in stream and "--no-owner" in stream and "--role=owner" in stream
    assert "--exit-on-error" in stream and not any(a.startswith("--jobs") for a in stream)
    parallel = restore_argv("pg_restore", fmt="directory", dbname_arg="--dbname=x", jobs=4, path="/spool/x",
                            flags=RestoreFlags(clean=True, no_owner=False, role=None))
    assert "--jobs=4" in parallel and "--format=directory" in parallel and parallel[-1] == "/spool/x"
    assert "--single-transaction" not in parallel  # pg_restore refuses it with --jobs
    check = restore_argv("pg_restore", fmt="custom", dbname_arg=None)
    assert "--file=/dev/null" in check and not any(a.startswith("--dbname") for a in check)


def test_client_env_quotes_every_setting_and_keeps_the_password_out():
    with ClientEnv(conn(), "host=evil port=1 dbname=x") as client:
        env = client.env()
        assert LOGIN["login_password"] not in "".join(env.values()) + client.dbname_arg
        assert "PGPASSWORD" not in env and "PGSERVICE" not in env
        assert "PATH" in env  # extends the environment, never replaces it
        assert client.dbname_arg == (
            "--dbname=dbname='host=evil port=1 dbname=x' user='backup' port='6543' sslmode='require' "
            "connect_timeout='7' application_name='runbook.ops pg_backup' host='db.example.internal' "
            "sslrootcert='/etc/ca.pem'")
        path = env["PGPASSFILE"]
        info = os.stat(path)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == r"db.example.internal:6543:host=evil port=1 dbname=x:backup:s3cr\:et\\pw" + "\n"
        assert client.env()["PGPASSFILE"] == path  # one file per ClientEnv
    assert not os.path.exists(path)


def test_memfd_passfile_is_readable_by_a_child_and_on_no_filesystem():
    passfile = PassFile("h:1:d:u:secret\n")
    try:
        assert passfile.kind == "memfd"
        assert passfile.path.startswith("/proc/%d/fd/" % os.getpid())
        # Each open of /proc/<pid>/fd/<n> starts at offset 0: parallel workers all read the whole line.
        reads = [subprocess.run(["cat", passfile.path], capture_output=True, check=True, close_fds=True).stdout
                 for child in ("first", "second")]
        assert reads == [b"h:1:d:u:secret\n"] * 2
        assert os.readlink(passfile.path).startswith("/memfd:")
    finally:
        passfile.close()
    assert not os.path.exists(passfile.path)


def test_file_passfile_fallback_is_private_and_swept(tmp_path):
    root = tmp_path / "root"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = root / ("%d-old" % dead.pid)
    stale.mkdir(parents=True)
    root.chmod(0o700)
    (stale / "pgpass").write_text("left by a killed run")
    alive = root / ("%d-live" % os.getpid())
    alive.mkdir()
    passfile = PassFile("h:1:d:u:secret\n", use_memfd=False, root=str(root))
    try:
        assert passfile.kind == "file"
        assert not stale.exists() and alive.exists()
        assert stat.S_IMODE(os.stat(passfile.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(passfile.path)).st_mode) == 0o700
        with open(passfile.path, encoding="utf-8") as handle:
            assert handle.read() == "h:1:d:u:secret\n"
    finally:
        passfile.close()
    assert not os.path.exists(os.path.dirname(passfile.path))
    assert sweep_passfiles(str(root)) == []


def test_file_passfile_refuses_a_shared_directory(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(RunbookError) as refused:
        PassFile("x", use_memfd=False, root=str(root))
    assert "not a private directory" in refused.value.msg


def test_passfile_lines_are_scoped():
    tcp = conn(login_host="::1", login_password="pw")
    assert passfile_lines(tcp, "*") == r"\:\:1:6543:\*:backup:pw" + "\n"
    socket = conn(login_host="", login_unix_socket="/run/postgresql", login_password="pw")
    assert passfile_lines(socket, "shop") == "/run/postgresql:6543:shop:backup:pw\nlocalhost:6543:shop:backup:pw\n"
    default = conn(login_host="", login_password="pw")
    assert passfile_lines(default, "shop") == "localhost:6543:shop:backup:pw\n"
    star_user = conn(login_user="*", login_password="pw")
    assert passfile_lines(star_user, "shop") == r"db.example.internal:6543:shop:\*:pw" + "\n"


def test_client_env_without_password_has_no_passfile():
    socket = conn(login_password="", login_host="", login_unix_socket="/run/postgresql")
    with ClientEnv(socket, "shop") as client:
        env = client.env()
        assert "PGPASSFILE" not in env
        assert "host='/run/postgresql'" in client.dbname_arg
    assert "unix socket /run/postgresql" in socket.where


def test_psycopg_kwargs():
    kwargs = conn().kwargs("shop")
    assert kwargs["host"] == "db.example.internal" and kwargs["port"] == 6543 and kwargs["dbname"] == "shop"
    assert kwargs["sslmode"] == "require" and kwargs["sslrootcert"] == "/etc/ca.pem" and kwargs["connect_timeout"] == 7
    assert kwargs["password"] == LOGIN["login_password"]
    assert "host" not in conn(login_host="").kwargs("x")
    assert "password" not in conn().settings("x")
    assert "password=" not in repr(conn().options)  # a logged options object never shows it


def test_one_place_decides_where_to_connect():
    assert conn().endpoint == PgEndpoint("db.example.internal", 6543)
    assert conn(login_unix_socket="/run/postgresql").endpoint == PgEndpoint("/run/postgresql", 6543)
    forwarded = PgConnection(conn().options, "pg_backup", endpoint=PgEndpoint("127.0.0.1", 40001))
    assert forwarded.where == "127.0.0.1:40001"
    assert "host='127.0.0.1' " in forwarded.conninfo("shop") + " " and "port='40001'" in forwarded.conninfo("shop")
    assert passfile_lines(forwarded, "shop").startswith("127.0.0.1:40001:shop:backup:")


@pytest.mark.parametrize("option, value, words", [
    ("db", "with\x00nul", "control character"),
    ("db", "y" * 64, "63 bytes"),
    ("db", "\u00e9" * 32, "63 bytes"),
    ("db", "../up", "cannot name the backup set"),
    ("target_db", "line\nbreak", "control character"),
    ("role", "r" * 70, "63 bytes"),
    ("login_user", "x" * 64, "63 bytes"),
    ("login_host", "host=evil port=1", "not a host name"),
    ("login_host", "a,b", "not a host name"),
    ("login_host", "postgresql://evil/x", "not a host name"),
    ("login_unix_socket", "relative", "absolute"),
    ("login_unix_socket", "/a,/b", "more than one"),
    ("login_password", "a\nb", "newline"),
    ("ca_cert", "a\x00b", "control character"),
    ("tables", ["ok", "bad\tpattern"], "tables[1]"),
    ("set", "../x", "set"),
    ("backup_id", "../x", "backup_id"),
    ("jobs", 0, "jobs=0 is out of range"),
    ("jobs", 129, "from 1 to 128"),
    ("connect_timeout", 0, "wait forever"),
    ("login_port", 70000, "from 1 to 65535"),
    ("compression_level", 0, "from 1 to 22"),
    ("compression_threads", -1, "0 uses every core"),
])
def test_options_refuse(option, value, words):
    with pytest.raises(RunbookError) as refused:
        options(**{option: value})
    assert option in refused.value.msg and words in refused.value.msg
    assert "s3cr" not in refused.value.msg


def test_options_accept_literal_names():
    opts = options(db="dbname=other_db", target_db="host=127.0.0.1 port=1 dbname=x", role="it's",
                   login_user="postgresql://u@h/x", login_host="fe80::1%eth0", set="plain")
    assert opts.restore.target_db == "host=127.0.0.1 port=1 dbname=x" and opts.set_name == "plain"
    assert options(db="a/b", set="plain").set_name == "plain"
    options(compression="gzip", compression_level=9)
    options(compression="none", compression_level=99)  # nothing compressed: no level to check
    with pytest.raises(RunbookError):
        options(compression="gzip", compression_level=10)


def test_options_derive_from_the_argument_spec():
    opts = options()
    assert opts.state == "backup" and opts.format == "custom" and opts.jobs == 1 and opts.level == "archive"
    assert opts.set_name == "shop" and opts.restore.target_db == "shop" and opts.restore.mode == "swap"
    assert opts.restore.keep_previous and opts.restore.verify_first and not opts.restore.terminate_connections
    assert opts.connection.login_port == 6543 and opts.connection.ssl_mode == "require"
    assert opts.job.compression == "zstd" and opts.job.max_age is None
    assert options(max_age="6h").job.max_age == 6 * 3600
    assert options(state="restore", format="custom", jobs=4).jobs == 4  # parallel restore from a custom archive


def test_argument_spec_refuses_before_the_module_runs():
    for bad in ({"state": "list"}, {"mode": "overwrite"}, {"level": "deep"}, {"ssl_mode": "on"}):
        with pytest.raises(InvalidParams):
            options(**bad)


def test_parallel_dump_needs_the_directory_format():
    with pytest.raises(RunbookError) as refused:
        options(jobs=2)
    assert "format=directory" in refused.value.msg
    assert options(jobs=2, format="directory").jobs == 2


def test_password_is_never_shown_when_refused():
    with pytest.raises(RunbookError) as refused:
        options(login_password="top\nsecret-value")
    assert "secret-value" not in refused.value.msg
    assert "secret" not in repr(options(login_password="secret-value"))


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
    multibyte = scratch_name("\u00e9" * 40, "verify")
    assert len(multibyte.encode()) <= 63 and multibyte.startswith("\u00e9" * 20)


def test_compare_counts():
    expected = {"public.a": 3, "public.b": 1, "public.c": 0}
    problems = compare_counts(expected, {"public.a": 3, "public.b": 2}, "database x")
    assert problems == ["table public.b has 2 rows in database x, the backup's manifest says 1",
                        "table public.c is missing from database x"]
    assert compare_counts(expected, dict(expected), "x") == []
