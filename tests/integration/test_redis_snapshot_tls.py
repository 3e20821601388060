"""redis_snapshot on hardened servers: TLS with a client certificate and a password, BGSAVE renamed
(command_names), SYNC disabled, and the least-privilege ACL users the documentation gives for each method."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pyrage

from tests.harness.collection import run_module
from tests.harness.fixtures import REDIS_RENAMED_BGSAVE
from tests.harness.services import RedisServer

# The pasteable least-privilege lines of docs/redis_snapshot.md (no key or channel access needed).
REPLICATION_ACL = "snap-repl on >repl-secret-1 -@all +info +sync +replconf"
BGSAVE_ACL = "snap-bgsave on >bgsave-secret-2 -@all +info +bgsave +config|get"


def tls_args(server: RedisServer) -> dict:
    return dict(server.tls_login, client_cert_file=str(server.client_cert_file),
                client_key_file=str(server.client_key_file))


def test_bgsave_renamed_over_tls_backup_verify_and_restore(redis_hardened: RedisServer, tmp_path: Path) -> None:
    client = redis_hardened.client()
    client.flushall()
    for i in range(200):
        client.set("phi:%d" % i, "v%d" % i)
    client.set("ttl-key", "x", ex=3600)
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "hipaa"}
    args = dict(tls_args(redis_hardened), method="bgsave", **repo)

    refused = run_module("redis_snapshot", args)
    assert refused.get("failed"), refused
    assert "BGSAVE is disabled or renamed" in refused["msg"] and "command_names" in refused["msg"], refused["msg"]

    backup = run_module("redis_snapshot", dict(args, command_names={"BGSAVE": REDIS_RENAMED_BGSAVE}))
    assert not backup.get("failed"), backup
    assert backup["manifest"]["redis"]["keys"] == {"db0": 201} and backup["manifest"]["redis"]["method"] == "bgsave"
    assert redis_hardened.password not in json.dumps(backup)

    verified = run_module("redis_snapshot", dict(repo, state="verify", level="load"))
    assert verified["verified"][0]["ok"] and verified["verified"][0]["details"]["keys"] == {"db0": 201}, verified

    client.flushall()
    client.set("after", "1")
    restored = run_module("redis_snapshot", dict(tls_args(redis_hardened), state="restore", flush=True, **repo))
    assert not restored.get("failed"), restored
    assert restored["keys_restored"] == {"db0": 201}
    assert client.get("phi:7") == b"v7" and client.get("after") is None and client.ttl("ttl-key") > 3000


def test_replication_backup_over_tls_needs_the_client_certificate(redis_hardened: RedisServer, tmp_path: Path) -> None:
    redis_hardened.client().set("repl-key", "1")
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "hipaa-repl"}
    ok = run_module("redis_snapshot", dict(tls_args(redis_hardened), **repo))
    assert not ok.get("failed") and ok["manifest"]["redis"]["method"] == "replication", ok
    without = run_module("redis_snapshot", dict(redis_hardened.tls_login, connect_timeout=3, **repo))
    assert without.get("failed") and "unexpected" not in without["msg"], without
    assert redis_hardened.password not in json.dumps(without)
    plain_on_tls = run_module("redis_snapshot", dict(redis_hardened.tls_login, tls=False, connect_timeout=3, **repo))
    assert plain_on_tls.get("failed") and "set tls: true" in plain_on_tls["msg"], plain_on_tls["msg"]


def test_sync_disabled_names_the_command_and_bgsave_still_works(service_factory: t.Any, tmp_path: Path) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-nosync"), name="redis-nosync",
                                             extra_config=['rename-command SYNC ""', 'rename-command PSYNC ""']))
    server.client().set("k", "v")
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "nosync"}
    refused = run_module("redis_snapshot", dict(server.login, **repo))
    assert refused.get("failed"), refused
    assert "SYNC is disabled or renamed" in refused["msg"] and "method=bgsave" in refused["msg"], refused["msg"]
    ok = run_module("redis_snapshot", dict(server.login, method="bgsave", **repo))
    assert not ok.get("failed") and ok["manifest"]["redis"]["keys"] == {"db0": 1}, ok


def test_sync_and_replconf_disabled_backup_verify_and_restore(service_factory: t.Any, tmp_path: Path) -> None:
    """A server with SYNC, PSYNC and REPLCONF disabled and BGSAVE and FLUSHALL renamed: the whole cycle by bgsave,
    encrypted, verified at every level, restored by keys with flush going through command_names."""
    names = {"BGSAVE": REDIS_RENAMED_BGSAVE, "FLUSHALL": "OPS_FLUSHALL_c3d4"}
    server = service_factory.add(RedisServer(
        service_factory.workdir("redis-noreplication"), name="redis-noreplication",
        extra_config=['rename-command SYNC ""', 'rename-command PSYNC ""', 'rename-command REPLCONF ""',
                      "rename-command BGSAVE %s" % names["BGSAVE"], "rename-command FLUSHALL %s" % names["FLUSHALL"]]))
    for db in (0, 5):
        pipe = server.client(db=db).pipeline(transaction=False)
        for i in range(150):
            pipe.set("k%d:%d" % (db, i), "v%d" % i)
        pipe.hset("h%d" % db, mapping={"a": "1", "b": "2"})
        pipe.execute()
    server.client(db=5).set("ttl", "x", ex=3600)
    identity = pyrage.x25519.Identity.generate()
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "noreplication"}
    backup = run_module("redis_snapshot", dict(server.login, method="bgsave", command_names=names,
                                               encryption_recipients=[str(identity.to_public())], **repo))
    assert not backup.get("failed"), backup
    assert backup["manifest"]["redis"]["keys"] == {"db0": 151, "db5": 152}
    assert backup["manifest"]["redis"]["method"] == "bgsave" and backup["manifest"]["encryption"]["algorithm"] == "age"

    for level in ("checksum", "rdb", "load"):
        verified = run_module("redis_snapshot", dict(repo, state="verify", level=level, encryption_identity=str(identity)))
        assert not verified.get("failed") and verified["verified"][0]["ok"], (level, verified)
    assert verified["verified"][0]["details"]["keys"] == {"db0": 151, "db5": 152}

    server.client(db=0).set("written-after", "1")
    server.client(db=5).delete("k5:7")
    restore = dict(server.login, state="restore", flush=True, encryption_identity=str(identity), **repo)
    unnamed = run_module("redis_snapshot", restore)
    assert unnamed.get("failed") and "FLUSHALL is disabled or renamed" in unnamed["msg"], unnamed
    restored = run_module("redis_snapshot", dict(restore, command_names=names))
    assert not restored.get("failed"), restored
    assert restored["keys_restored"] == {"db0": 151, "db5": 152} and restored["verified"][0]["ok"]
    assert server.client(db=0).get("written-after") is None, "flush: true did not run the renamed FLUSHALL"
    assert server.client(db=5).get("k5:7") == b"v7" and server.client(db=5).ttl("ttl") > 3000


def test_documented_least_privilege_users_for_each_backup_method(service_factory: t.Any, tmp_path: Path) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-leastpriv"), name="redis-leastpriv",
                                             users=[REPLICATION_ACL, BGSAVE_ACL]))
    server.client().set("k", "v")
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "least"}
    repl = run_module("redis_snapshot", dict(server.login, login_user="snap-repl", login_password="repl-secret-1", **repo))
    assert not repl.get("failed"), repl
    bgsave = run_module("redis_snapshot", dict(server.login, login_user="snap-bgsave", login_password="bgsave-secret-2",
                                               method="bgsave", **repo))
    assert not bgsave.get("failed"), bgsave
    # Each user is refused the other method, with the rights it lacks named.
    wrong = run_module("redis_snapshot", dict(server.login, login_user="snap-bgsave", login_password="bgsave-secret-2",
                                              **repo))
    assert wrong.get("failed") and "+sync +replconf" in wrong["msg"], wrong["msg"]
