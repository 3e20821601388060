"""redis_snapshot state=flushed against real Redis servers: refused on protected keys before anything is
written, allowed with a verified snapshot taken first (and that snapshot restores what was flushed), check
mode changing nothing, and the hardened server (TLS with a client certificate, renamed commands)."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from tests.harness.collection import run_module
from tests.harness.fixtures import REDIS_RENAMED_BGSAVE, make_client_cert, make_tls_files
from tests.harness.services import RedisServer

RENAMED_FLUSHDB = "OPS_FLUSHDB_5e6f7a8b"
# The databases these tests fill on the session-wide Redis; emptied afterwards, because other test
# files compare that server's key counts with what they wrote themselves.
USED_DBS = (4, 6, 7, 8)


@pytest.fixture(autouse=True)
def leave_the_shared_server_as_found(redis_plain: RedisServer) -> t.Iterator[None]:
    yield
    for db in USED_DBS:
        redis_plain.client(db=db).flushdb()


def fill(server: RedisServer, db: int, prefix: str, count: int) -> None:
    client = server.client(db=db)
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set("%s:%d" % (prefix, i), "v%d" % i)
    pipe.execute()


def repository_files(repo: Path) -> t.List[str]:
    return sorted(str(path.relative_to(repo)) for path in repo.rglob("*") if path.is_file()) if repo.exists() else []


def test_refused_on_protected_keys_before_any_snapshot(redis_plain: RedisServer, tmp_path: Path) -> None:
    fill(redis_plain, 4, "cache", 50)
    client = redis_plain.client(db=4)
    client.set("session:9f2c", "token-bearing-value")
    client.set("rl:203.0.113.7", 3)
    repo = tmp_path / "repo"
    args = dict(redis_plain.login, state="flushed", db=4, repository="file://%s" % repo, set="flush-refused")

    refused = run_module("redis_snapshot", args)
    assert refused.get("failed"), refused
    assert "protected_patterns" in refused["msg"] and "force: true" in refused["msg"], refused["msg"]
    assert "db4: 1 matching session:*" in refused["msg"] and "1 matching rl:*" in refused["msg"], refused["msg"]
    assert refused["flushed"]["done"] is False and refused["flushed"]["keys_before"] == {"db4": 52}
    assert refused["flushed"]["protected_keys"] == {"db4": {"session:*": 1, "rl:*": 1}}
    assert refused["backup_id"] is None and refused["verified"] == [] and not refused["changed"]
    # Counts only: no protected key name leaves the module.
    assert "9f2c" not in json.dumps(refused) and "203.0.113.7" not in json.dumps(refused)
    assert client.dbsize() == 52, "a refused flush removed keys"
    assert repository_files(repo) == [], "a refused flush wrote into the repository"

    # Check mode refuses the same way; custom patterns replace the defaults.
    checked = run_module("redis_snapshot", args, check_mode=True)
    assert checked.get("failed") and "nothing was snapshotted or flushed" in checked["msg"], checked
    own = run_module("redis_snapshot", dict(args, protected_patterns=["cache:1*"]), check_mode=True)
    assert own.get("failed") and own["flushed"]["protected_keys"] == {"db4": {"cache:1*": 11}}, own
    unguarded = run_module("redis_snapshot", dict(args, protected_patterns=[]), check_mode=True)
    assert not unguarded.get("failed") and unguarded["changed"], unguarded
    assert client.dbsize() == 52


def test_flush_takes_a_verified_snapshot_first_and_it_restores_the_keys(redis_plain: RedisServer,
                                                                        tmp_path: Path) -> None:
    fill(redis_plain, 6, "stale", 120)
    redis_plain.client(db=6).set("stale:ttl", "x", ex=7200)
    fill(redis_plain, 7, "other", 5)
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "flush-ok"}
    args = dict(redis_plain.login, state="flushed", db=6, level="load", **repo)

    checked = run_module("redis_snapshot", args, check_mode=True)
    assert not checked.get("failed") and checked["changed"], checked
    assert checked["flushed"] == {"command": "FLUSHDB", "db": 6, "keys_before": {"db6": 121}, "protected_keys": {},
                                  "done": False}
    assert checked["backup_id"] is None and "would snapshot" in checked["msg"] and "db6" in checked["msg"]
    assert redis_plain.client(db=6).dbsize() == 121, "check mode flushed"
    assert repository_files(tmp_path / "repo") == [], "check mode wrote a snapshot"

    done = run_module("redis_snapshot", args)
    assert not done.get("failed"), done
    assert done["changed"] and done["flushed"]["done"] and done["flushed"]["keys_before"] == {"db6": 121}
    assert redis_plain.client(db=6).dbsize() == 0 and redis_plain.client(db=7).dbsize() == 5, "FLUSHDB hit another db"
    (entry,) = done["verified"]
    assert entry["ok"] and entry["level"] == "load" and entry["backup_id"] == done["backup_id"]
    assert entry["details"]["keys"]["db6"] == 121
    assert done["manifest"]["redis"]["keys"]["db6"] == 121
    assert redis_plain.password not in json.dumps(done)

    # Idempotent: an empty database is neither snapshotted nor flushed again.
    again = run_module("redis_snapshot", args)
    assert not again.get("failed") and not again["changed"] and again["backup_id"] is None, again

    restored = run_module("redis_snapshot", dict(redis_plain.login, state="restore", backup_id=done["backup_id"], **repo))
    assert not restored.get("failed"), restored
    client = redis_plain.client(db=6)
    assert client.dbsize() == 121 and client.get("stale:42") == b"v42" and client.ttl("stale:ttl") > 7000


def test_force_flushes_protected_keys_and_flush_all_must_be_explicit(redis_plain: RedisServer, tmp_path: Path) -> None:
    fill(redis_plain, 8, "sess", 10)
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "flush-force"}
    args = dict(redis_plain.login, state="flushed", db=8, force=True, **repo)
    forced = run_module("redis_snapshot", args)
    assert not forced.get("failed"), forced
    assert forced["flushed"]["protected_keys"] == {"db8": {"sess:*": 10}} and forced["verified"][0]["ok"]
    assert "force: true flushes protected keys" in json.dumps(forced.get("warnings")), forced
    assert redis_plain.client(db=8).dbsize() == 0

    no_target = run_module("redis_snapshot", dict(redis_plain.login, state="flushed", **repo))
    assert no_target.get("failed") and "db" in no_target["msg"] and "flush_all" in no_target["msg"], no_target
    false_target = run_module("redis_snapshot", dict(redis_plain.login, state="flushed", flush_all=False, **repo))
    assert false_target.get("failed") and "names none" in false_target["msg"], false_target
    both = run_module("redis_snapshot", dict(redis_plain.login, state="flushed", db=1, flush_all=True, **repo))
    assert both.get("failed") and "mutually exclusive" in both["msg"], both
    encrypted = run_module("redis_snapshot", dict(args, encryption_recipients=[
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]))
    assert encrypted.get("failed") and "encryption_identity" in encrypted["msg"], encrypted


def test_flush_all_with_tls_renamed_bgsave_and_flushdb(service_factory: t.Any, redis_hardened: RedisServer,
                                                       tmp_path: Path) -> None:
    # A private copy of the hardened setup that also renames FLUSHDB and disables SYNC: the session-wide
    # redis_hardened keeps FLUSHDB for the harness's own clients.
    workdir = service_factory.workdir("redis-flush-hardened")
    files = make_tls_files(workdir / "tls")
    server = RedisServer(workdir, name="redis-flush-hardened", tls_cert_file=files.cert_file,
                         tls_key_file=files.key_file, tls_ca_file=files.ca_file, tls_auth_clients=True,
                         extra_config=["rename-command BGSAVE %s" % REDIS_RENAMED_BGSAVE,
                                       "rename-command FLUSHDB %s" % RENAMED_FLUSHDB, 'rename-command SYNC ""'])
    cert, key = make_client_cert(files)
    service_factory.add(server)
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(80):
        pipe.set("cache:%d" % i, "v%d" % i)
    pipe.execute()
    tls = dict(server.tls_login, client_cert_file=str(cert), client_key_file=str(key))
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "hipaa-flush"}
    args = dict(tls, state="flushed", db=0, method="bgsave", **repo)

    unnamed = run_module("redis_snapshot", dict(args, command_names={"BGSAVE": REDIS_RENAMED_BGSAVE}))
    assert unnamed.get("failed") and "FLUSHDB is disabled or renamed" in unnamed["msg"], unnamed
    assert "command_names" in unnamed["msg"] and client.dbsize() == 80
    assert unnamed["backup_id"] and unnamed["verified"][0]["ok"], "the snapshot is taken and kept before the flush"

    names = {"BGSAVE": REDIS_RENAMED_BGSAVE, "flushdb": RENAMED_FLUSHDB}
    done = run_module("redis_snapshot", dict(args, command_names=names))
    assert not done.get("failed"), done
    assert done["flushed"]["done"] and done["flushed"]["keys_before"] == {"db0": 80}
    assert done["manifest"]["redis"]["method"] == "bgsave" and done["verified"][0]["ok"]
    assert client.dbsize() == 0 and server.password not in json.dumps(done)

    restored = run_module("redis_snapshot", dict(tls, state="restore", backup_id=done["backup_id"], **repo))
    assert not restored.get("failed") and restored["keys_restored"] == {"db0": 80}, restored
    assert client.get("cache:79") == b"v79"

    # On the session's hardened server: FLUSHALL over TLS with the client certificate, BGSAVE renamed.
    hardened = redis_hardened.client()
    hardened.flushall()
    for db in (0, 2):
        redis_hardened.client(db=db).set("entry:%d" % db, "x")
    hard_tls = dict(redis_hardened.tls_login, client_cert_file=str(redis_hardened.client_cert_file),
                    client_key_file=str(redis_hardened.client_key_file))
    everything = run_module("redis_snapshot", dict(hard_tls, state="flushed", flush_all=True, method="bgsave",
                                                   command_names={"BGSAVE": REDIS_RENAMED_BGSAVE},
                                                   repository="file://%s" % (tmp_path / "repo2")))
    assert not everything.get("failed"), everything
    assert everything["flushed"]["command"] == "FLUSHALL" and everything["flushed"]["db"] is None
    assert everything["flushed"]["keys_before"] == {"db0": 1, "db2": 1}
    assert hardened.dbsize() == 0 and redis_hardened.client(db=2).dbsize() == 0
