"""data_canary against the harness's real PostgreSQL and Redis: written then read back, the server's clock,
max() of a declared column, hostile identifiers quoted or refused, check mode writing nothing, the other
service's environment never applied, and unreachable servers ending in a clean failure."""

from __future__ import annotations

import datetime
import json
import socket
import typing as t
import uuid

import pytest

from tests.harness.collection import run_module
from tests.harness.hostile import assert_clean_failure


def canary(args: t.Dict[str, t.Any], **kwargs: t.Any) -> t.Dict[str, t.Any]:
    result = run_module("data_canary", args, **kwargs)
    assert "unexpected" not in result.get("msg", ""), result
    return result


def parse(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def database(postgres) -> t.Iterator[str]:
    name = "canary_%s" % uuid.uuid4().hex[:8]
    postgres.psql('CREATE DATABASE "%s"' % name)
    yield name
    postgres.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_postgresql_canary_written_then_read_back(postgres, database):
    pg = dict(postgres.login, service="postgresql", db=database)
    first = canary(dict(pg))
    assert not first.get("failed") and first["changed"], first
    assert first["service"] == "postgresql" and len(first["token"]) == 32
    assert abs((parse(first["written_at"]) - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 60
    row = postgres.psql("SELECT name, token FROM public.runbook_canary", db=database)
    assert row == "runbook|%s" % first["token"]

    read = canary(dict(pg, state="read"))
    assert read["changed"] is False and read["found"] is True, read
    assert (read["token"], read["written_at"]) == (first["token"], first["written_at"])
    assert 0 <= read["age_seconds"] < 60

    # A new canary replaces the old one (one row per name); another name is a row of its own.
    second = canary(dict(pg))
    other = canary(dict(pg, name="drill"))
    assert second["token"] != first["token"]
    assert postgres.psql("SELECT count(*) FROM public.runbook_canary", db=database) == "2"
    assert canary(dict(pg, state="read"))["token"] == second["token"]
    assert canary(dict(pg, state="read", name="drill"))["token"] == other["token"]


def test_postgresql_read_finds_nothing_without_changing_anything(postgres, database):
    read = canary(dict(postgres.login, service="postgresql", db=database, state="read"))
    assert read["found"] is False and read["written_at"] is None and read["token"] is None, read
    assert postgres.psql("SELECT to_regclass('public.runbook_canary') IS NULL", db=database) == "t"


def test_timestamp_column_gives_the_newest_data_time(postgres, database):
    postgres.psql("CREATE TABLE audit (id serial, created_at timestamptz, plain timestamp, note text); "
                  "INSERT INTO audit (created_at, plain, note) VALUES "
                  "('2026-11-24 02:00:00+00', '2026-11-24 01:00:00', 'a'), "
                  "('2026-11-24 03:14:02+00', '2026-11-24 01:30:00', 'b'), (NULL, NULL, 'c')", db=database)
    pg = dict(postgres.login, service="postgresql", db=database, state="read")
    read = canary(dict(pg, timestamp_column={"table": "audit", "column": "created_at"}))
    assert read["newest_at"] == "2026-11-24T03:14:02Z" and read["found"] is False, read
    naive = canary(dict(pg, timestamp_column={"table": "audit", "column": "plain"}))
    assert naive["newest_at"] == "2026-11-24T01:30:00Z"
    postgres.psql("CREATE TABLE empty_audit (created_at timestamptz)", db=database)
    assert canary(dict(pg, timestamp_column={"table": "empty_audit", "column": "created_at"}))["newest_at"] is None
    wrong = canary(dict(pg, timestamp_column={"table": "audit", "column": "note"}))
    assert "is of type text, not a timestamp" in assert_clean_failure(wrong)
    missing = canary(dict(pg, timestamp_column={"table": "no_such_table", "column": "created_at"}))
    assert "no_such_table" in assert_clean_failure(missing)
    redis_column = canary(dict(service="redis", state="read", timestamp_column={"table": "a", "column": "b"}))
    assert "PostgreSQL only" in assert_clean_failure(redis_column)


def test_hostile_identifiers_are_quoted_or_refused(postgres, database):
    postgres.psql("CREATE TABLE keep_me (id int)", db=database)
    hostile = 'x"; DROP TABLE keep_me; --'
    pg = dict(postgres.login, service="postgresql", db=database)
    written = canary(dict(pg, table=hostile, name="it's"))
    assert not written.get("failed"), written
    # The name became one quoted table; nothing else ran.
    assert postgres.psql("SELECT count(*) FROM pg_tables WHERE tablename IN ('keep_me', %s)"
                         % "'x\"; DROP TABLE keep_me; --'", db=database) == "2"
    assert canary(dict(pg, table=hostile, name="it's", state="read"))["token"] == written["token"]
    read = canary(dict(pg, state="read", timestamp_column={"schema": "public", "table": "keep_me",
                                                           "column": "id) FROM keep_me; SELECT now("}))
    assert "does not exist" in assert_clean_failure(read)
    for bad in ({"table": "line\nbreak"}, {"schema": "x" * 64}, {"db": "dbname=postgres host=/tmp"}):
        refused = canary(dict(pg, **bad))
        assert_clean_failure(refused)
    assert postgres.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db=database) == "2"


def test_check_mode_writes_nothing(postgres, database, redis_plain):
    pg = dict(postgres.login, service="postgresql", db=database)
    checked = canary(dict(pg), check_mode=True)
    assert checked["changed"] and checked["written_at"] is None and "would write" in checked["msg"], checked
    assert postgres.psql("SELECT to_regclass('public.runbook_canary') IS NULL", db=database) == "t"
    key = "runbook:canary:%s" % uuid.uuid4().hex[:6]
    rd = dict(redis_plain.login, service="redis", key=key)
    assert canary(dict(rd), check_mode=True)["changed"]
    assert redis_plain.client().exists(key) == 0
    # Diff shows before and after without writing in check mode.
    diffed = canary(dict(rd), check_mode=True, diff=True)
    assert diffed["diff"] == {"before": {}, "after": {"written_at": None, "token": None}}


def test_redis_canary_written_then_read_back_without_ttl(redis_plain):
    key = "runbook:canary:%s" % uuid.uuid4().hex[:6]
    client = redis_plain.client(db=3)
    client.set(key, "old", ex=600)
    rd = dict(redis_plain.login, service="redis", key=key, redis_db=3)
    written = canary(dict(rd))
    assert not written.get("failed") and written["changed"], written
    stored = json.loads(client.get(key))
    assert stored == {"written_at": stored["written_at"], "token": written["token"]}
    assert client.ttl(key) == -1  # no TTL: the canary must survive until the backup is restored
    read = canary(dict(rd, state="read"))
    assert read["found"] and read["token"] == written["token"] and read["written_at"] == written["written_at"]
    assert 0 <= read["age_seconds"] < 60
    assert redis_plain.client(db=0).exists(key) == 0
    client.set(key, "not json")
    assert "not a canary" in assert_clean_failure(canary(dict(rd, state="read")))
    absent = canary(dict(rd, key=key + ":none", state="read"))
    assert absent["found"] is False and absent["age_seconds"] is None


def test_each_service_takes_only_its_own_environment(redis_plain):
    # PGPORT/PGPASSWORD in the environment (an AWX PostgreSQL credential) must not reach a Redis connection.
    env = {"PGPORT": "1", "PGPASSWORD": "pg-secret", "REDIS_PORT": str(redis_plain.port),
           "REDIS_PASSWORD": redis_plain.password or ""}
    result = run_module("data_canary", dict(service="redis", login_host=redis_plain.host, state="read",
                                            key="runbook:env"), env=env)
    assert not result.get("failed"), result
    assert result["found"] is False


def test_unreachable_servers_fail_cleanly(postgres, redis_plain):
    port = free_port()
    pg = canary(dict(postgres.login, service="postgresql", login_port=port))
    assert_clean_failure(pg, secrets=[postgres.password], mentions=["cannot connect"])
    rd = canary(dict(redis_plain.login, service="redis", login_port=port))
    assert_clean_failure(rd, secrets=[redis_plain.password], mentions=["cannot connect to Redis"])
    wrong = canary(dict(redis_plain.login, service="redis", login_password="wrong-password", state="read"))
    assert_clean_failure(wrong, secrets=["wrong-password"], mentions=["authentication"])
