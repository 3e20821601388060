"""redis_snapshot against real Redis servers: backup by both methods, verify at every level, restore by
both methods, and the faults the runbooks met (dropped connection, BGSAVE running or failing, missing ACL
rights, a corrupt RDB)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import typing as t
from pathlib import Path

import pyrage
import pytest

from tests.harness.collection import run_module
from tests.harness.fixtures import (
    REDIS_BACKUP_PASSWORD, REDIS_BACKUP_USER, REDIS_LIMITED_PASSWORD, REDIS_LIMITED_USER, make_tls_files)
from tests.harness.services import RedisServer

LONG_TTL_MS = 3 * 3600 * 1000


def populate(server: RedisServer, prefix: str = "k", count: int = 300) -> None:
    """Every common type, in db 0 and db 3, some with TTLs, some binary."""
    for db in (0, 3):
        client = server.client(db=db)
        client.flushdb()
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            pipe.set("%s:str:%d" % (prefix, i), os.urandom(20 + i % 50))
        pipe.hset("%s:hash" % prefix, mapping={"f%d" % i: "v%d" % i for i in range(200)})
        pipe.rpush("%s:list" % prefix, *["item%d" % i for i in range(150)])
        pipe.sadd("%s:set" % prefix, *["m%d" % i for i in range(120)])
        pipe.zadd("%s:zset" % prefix, {"z%d" % i: i * 1.5 for i in range(130)})
        pipe.xadd("%s:stream" % prefix, {"event": "login", "user": "alice"})
        pipe.set("%s:ttl" % prefix, b"\x00\xffbinary", px=LONG_TTL_MS)
        pipe.hset("%s:ttlhash" % prefix, "a", "b")
        pipe.pexpire("%s:ttlhash" % prefix, LONG_TTL_MS)
        pipe.execute()


def snapshot_of(server: RedisServer) -> t.Dict[int, dict]:
    """Per database: key -> (type, value, has_ttl, ttl bucket)."""
    result: t.Dict[int, dict] = {}
    for db in range(16):
        client = server.client(db=db)
        keys = sorted(client.scan_iter(count=1000))
        if not keys:
            continue
        data = {}
        for key in keys:
            kind = client.type(key).decode()
            if kind == "string":
                value: t.Any = client.get(key)
            elif kind == "hash":
                value = sorted(client.hgetall(key).items())
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = sorted(client.smembers(key))
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = client.xrange(key)
            else:
                value = None
            ttl = client.pttl(key)
            data[key] = (kind, value, ttl > 0, round(ttl / 60000.0) if ttl > 0 else ttl)
        result[db] = data
    return result


def age_keypair() -> t.Tuple[str, str]:
    identity = pyrage.x25519.Identity.generate()
    return str(identity.to_public()), str(identity)


def test_replication_backup_verify_and_keys_restore(redis_plain: RedisServer, repository: dict,
                                                    service_factory: t.Any) -> None:
    populate(redis_plain)
    expected = snapshot_of(redis_plain)
    recipient, identity = age_keypair()
    args = dict(redis_plain.login, **repository)
    args.update(set="plain", encryption_recipients=[recipient], labels={"purpose": "test"})
    backup = run_module("redis_snapshot", args)
    assert not backup.get("failed"), backup
    assert backup["changed"] and backup["backup_id"]
    facts = backup["manifest"]["redis"]
    assert facts["keys"] == {"db0": len(expected[0]), "db3": len(expected[3])}
    assert facts["rdb_version"] >= 9 and facts["method"] == "replication"
    assert facts["version"].startswith("7.")
    assert backup["manifest"]["encryption"]["algorithm"] == "age"
    assert redis_plain.password not in json.dumps(backup)

    common = dict(repository, set="plain", state="verify", encryption_identity=identity)
    for level in ("checksum", "rdb", "load"):
        verified = run_module("redis_snapshot", dict(common, level=level))
        assert not verified.get("failed"), (level, verified)
        (entry,) = verified["verified"]
        assert entry["ok"] and entry["level"] == level and entry["backup_id"] == backup["backup_id"]
        assert not verified["changed"]
    rdb = run_module("redis_snapshot", dict(common, level="rdb"))["verified"][0]["details"]
    assert "python" in rdb["crc_checked_by"]
    assert rdb["keys_read"] == len(expected[0]) + len(expected[3])
    # Without the identity, an encrypted RDB cannot be checked beyond its stored bytes.
    no_identity = run_module("redis_snapshot", dict(common, level="rdb", encryption_identity=None))
    assert no_identity.get("failed") and "encryption_identity" in no_identity["msg"]

    target = service_factory.add(RedisServer(service_factory.workdir("redis-target"), name="redis-target"))
    target.client(db=0).set("stale", "value")
    restore_args = dict(target.login, **repository)
    restore_args.update(set="plain", state="restore", encryption_identity=identity, flush=True)
    checked = run_module("redis_snapshot", restore_args, check_mode=True, diff=True)
    assert checked["changed"] and not checked.get("failed"), checked
    assert checked["diff"]["before"]["keys"] == {"db0": 1}, checked
    assert "diff" not in run_module("redis_snapshot", restore_args, check_mode=True)
    assert target.client().get("stale") == b"value", "check mode changed the target"
    restored = run_module("redis_snapshot", restore_args)
    assert not restored.get("failed"), restored
    assert restored["keys_restored"] == {"db0": len(expected[0]), "db3": len(expected[3])}
    assert [entry["ok"] for entry in restored["verified"]] == [True]
    # Both read now: TTLs count down on both servers, so minute buckets match however long the test took.
    assert snapshot_of(target) == snapshot_of(redis_plain)
    assert {db: len(keys) for db, keys in snapshot_of(target).items()} == {db: len(keys) for db, keys in expected.items()}


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_both_transfer_modes_store_a_clean_rdb(redis_plain: RedisServer, tmp_path: Path, diskless: str) -> None:
    populate(redis_plain, count=50)
    redis_plain.client().config_set("repl-diskless-sync", diskless)
    try:
        repo = {"repository": "file://%s" % (tmp_path / "repo")}
        result = run_module("redis_snapshot", dict(redis_plain.login, set="modes", compression="none", **repo))
    finally:
        redis_plain.client().config_set("repl-diskless-sync", "yes")
    assert not result.get("failed"), result
    assert "encryption_recipients is empty" in json.dumps(result.get("warnings", [])), result
    assert result["manifest"]["redis"]["transfer"] == ("diskless" if diskless == "yes" else "disk")
    stored = (tmp_path / "repo" / "redis" / "modes" / result["backup_id"] / "dump.rdb").read_bytes()
    # A clean RDB: header, end opcode + CRC64 as the last 9 bytes, no 40-byte marker after it.
    assert stored[:5] == b"REDIS" and stored[-9] == 0xFF
    local = redis_plain.datadir.parent / ("check-%s.rdb" % diskless)
    local.write_bytes(stored)
    assert os.system("redis-check-rdb %s >/dev/null" % local) == 0
    local.unlink()


def test_backup_user_with_sync_rights_and_limited_user(redis_acl: RedisServer, tmp_path: Path) -> None:
    repo = {"repository": "file://%s" % (tmp_path / "repo")}
    redis_acl.client().set("acl-key", "1")
    ok = run_module("redis_snapshot", dict(redis_acl.login, login_user=REDIS_BACKUP_USER,
                                           login_password=REDIS_BACKUP_PASSWORD, set="acl", **repo))
    assert not ok.get("failed"), ok
    denied = run_module("redis_snapshot", dict(redis_acl.login, login_user=REDIS_LIMITED_USER,
                                               login_password=REDIS_LIMITED_PASSWORD, set="acl", **repo))
    assert denied.get("failed")
    assert "+sync +replconf" in denied["msg"] and "not allowed" in denied["msg"] and REDIS_LIMITED_USER in denied["msg"], denied["msg"]
    assert REDIS_LIMITED_PASSWORD not in json.dumps(denied)
    wrong = run_module("redis_snapshot", dict(redis_acl.login, login_user=REDIS_BACKUP_USER,
                                              login_password="wrong", set="acl", **repo))
    assert wrong.get("failed") and "authentication" in wrong["msg"] and "wrong" not in wrong["msg"].replace("WRONGPASS", "")


def _manifests(repo_dir: Path, set_name: str) -> t.List[Path]:
    return sorted((repo_dir / "redis" / set_name).glob("*/manifest.json"))


def test_connection_dropped_mid_transfer_commits_nothing(service_factory: t.Any, tmp_path: Path) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-drop"), name="redis-drop"))
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(20000):
        pipe.set("drop:%d" % i, os.urandom(100))
    pipe.execute()
    repo_dir = tmp_path / "repo"
    args = dict(server.login, repository="file://%s" % repo_dir, set="drop")
    first = run_module("redis_snapshot", args)
    assert not first.get("failed"), first
    # Slow the snapshot down (microseconds per key) so that the kill lands mid-transfer.
    client.config_set("rdb-key-save-delay", "300")
    client.config_set("repl-diskless-sync-delay", "0")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(run_module("redis_snapshot", args)))
    worker.start()
    deadline = time.monotonic() + 30
    while int(client.info("persistence")["rdb_bgsave_in_progress"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the transfer is under way (about 6 s in total at this delay)
    server.kill()
    worker.join(120)
    assert outcome.get("failed"), outcome
    assert "source" in outcome["msg"] and "127.0.0.1:%d" % server.port in outcome["msg"], outcome["msg"]
    assert [p.parent.name for p in _manifests(repo_dir, "drop")] == [first["backup_id"]]
    leftovers = [p for p in (repo_dir / "redis" / "drop").rglob("*") if p.is_file() and first["backup_id"] not in str(p)]
    assert leftovers == []


def test_bgsave_waits_for_a_running_bgsave_and_reports_a_failing_one(service_factory: t.Any, tmp_path: Path) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-bgsave"), name="redis-bgsave"))
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.set("bg:%d" % i, "v%d" % i)
    pipe.execute()
    repo_dir = tmp_path / "repo"
    args = dict(server.login, repository="file://%s" % repo_dir, set="bg", method="bgsave")
    client.config_set("rdb-key-save-delay", "500")
    client.bgsave()
    saves_before = int(client.info("persistence")["rdb_saves"])
    result = run_module("redis_snapshot", args)
    assert not result.get("failed"), result
    facts = result["manifest"]["redis"]
    assert facts["waited_for_running_bgsave"] is True
    assert facts["rdb_saves"] == saves_before + 1
    assert facts["keys"] == {"db0": 3000}
    client.config_set("rdb-key-save-delay", "0")
    verified = run_module("redis_snapshot", dict(repository="file://%s" % repo_dir, set="bg", state="verify", level="load"))
    assert verified["verified"][0]["ok"] and verified["verified"][0]["details"]["keys"] == {"db0": 3000}, verified

    # A BGSAVE that fails (the target name is a directory, so the rename fails): LASTSAVE would not
    # tell, rdb_last_bgsave_status does.
    dump = server.datadir / "dump.rdb"
    dump.unlink()
    dump.mkdir()
    (dump / "blocker").write_text("x")
    failed = run_module("redis_snapshot", args)
    assert failed.get("failed") and "BGSAVE" in failed["msg"] and "failed" in failed["msg"], failed
    assert len(_manifests(repo_dir, "bg")) == 1


def test_corrupt_rdb_fails_rdb_and_load_verify(redis_plain: RedisServer, tmp_path: Path) -> None:
    populate(redis_plain, count=40)
    repo_dir = tmp_path / "repo"
    common = {"repository": "file://%s" % repo_dir, "set": "corrupt"}
    backup = run_module("redis_snapshot", dict(redis_plain.login, compression="none", **common))
    assert not backup.get("failed"), backup
    folder = repo_dir / "redis" / "corrupt" / backup["backup_id"]
    data = bytearray((folder / "dump.rdb").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "dump.rdb").write_bytes(bytes(data))
    # Keep the stored checksum consistent so that only the RDB's own CRC64 can catch the flip.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["objects"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    checksum = run_module("redis_snapshot", dict(common, state="verify", level="checksum"))
    assert checksum["verified"][0]["ok"], checksum
    rdb = run_module("redis_snapshot", dict(common, state="verify", level="rdb"))
    assert rdb.get("failed") and not rdb["verified"][0]["ok"]
    assert "CRC" in rdb["msg"], rdb["msg"]
    load = run_module("redis_snapshot", dict(common, state="verify", level="load"))
    assert load.get("failed") and "could not load" in load["msg"], load["msg"]


def test_check_mode_and_max_age(redis_plain: RedisServer, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    args = dict(redis_plain.login, repository="file://%s" % repo_dir, set="idem", max_age="1h")
    checked = run_module("redis_snapshot", args, check_mode=True)
    assert checked["changed"] and not checked.get("failed") and checked["backup_id"] is None, checked
    assert not repo_dir.exists() or _manifests(repo_dir, "idem") == []
    first = run_module("redis_snapshot", args)
    assert first["changed"] and "skipped" not in first
    second = run_module("redis_snapshot", args)
    assert not second["changed"] and second["skipped"] and second["backup_id"] == first["backup_id"]


def test_bgsave_backup_and_file_restore_on_aof_survives_restart(service_factory: t.Any, tmp_path: Path) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-aof-restore"), name="redis-aof-restore",
                                             appendonly=True))
    populate(server, count=100)
    expected = snapshot_of(server)
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "aof"}
    backup = run_module("redis_snapshot", dict(server.login, method="bgsave", **repo))
    assert not backup.get("failed"), backup
    # The world changes after the snapshot.
    server.client(db=0).flushall()
    server.client(db=0).set("after-snapshot", "x")
    pid_file = server.process.pid_file
    stop = ["sh", "-c", 'kill "$(cat "$1")"', "stop", str(pid_file)]
    start = ["redis-server", str(server.conf), "--daemonize", "yes", "--pidfile", str(pid_file)]
    args = dict(server.login, state="restore", method="file", stop_command=stop, start_command=start, **repo)
    checked = run_module("redis_snapshot", args, check_mode=True)
    assert checked["changed"] and server.client().get("after-snapshot") == b"x"
    restored = run_module("redis_snapshot", args)
    assert not restored.get("failed"), restored
    assert restored["keys_restored"] == {"db0": len(expected[0]), "db3": len(expected[3])}
    assert snapshot_of(server) == expected
    assert any("appendonlydir.pre-restore-" in p for p in restored["previous_files"])
    assert "appendonly yes" in server.conf.read_text()
    assert server.client().config_get("appendonly")["appendonly"] == "yes"
    # Restart: Redis loads the AOF, which must now hold the restored data.
    server.stop()
    server.start()
    assert snapshot_of(server) == expected


# --------------------------------------------------------------------------- the spool and TLS

def mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True)


@pytest.fixture
def tiny_spool(tmp_path: Path) -> t.Iterator[Path]:
    """A 1 MiB file system: an RDB of a few MiB does not fit."""
    path = tmp_path / "tiny-spool"
    mount_tmpfs(path, "size=1m,mode=0755")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill_incompressible(server: RedisServer, mib: int = 3) -> int:
    client = server.client()
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for i in range(mib * 1024):
        pipe.set("spool:%d" % i, os.urandom(1024))
    pipe.execute()
    return mib * 1024


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_full_spool_is_named_and_the_backup_is_not_blamed(redis_plain: RedisServer, tmp_path: Path,
                                                            tiny_spool: Path, encrypted: bool) -> None:
    keys = fill_incompressible(redis_plain)
    recipient, identity = age_keypair()
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "spool"}
    backup_args = dict(redis_plain.login, **repo)
    if encrypted:
        backup_args["encryption_recipients"] = [recipient]
    backup = run_module("redis_snapshot", backup_args)
    assert not backup.get("failed"), backup
    key = {"encryption_identity": identity} if encrypted else {}

    verify = run_module("redis_snapshot", dict(repo, state="verify", level="load", spool_dir=str(tiny_spool), **key))
    assert verify.get("failed"), verify
    msg = verify["msg"]
    assert str(tiny_spool) in msg and "is full" in msg and "spool directory" in msg, msg
    assert "not judged" in msg and backup["backup_id"] in msg, msg
    for blame in ("corrupt", "truncated", "failed verification", "decrypt failed"):
        assert blame not in msg, msg
    assert os.listdir(tiny_spool) == [], "the private work directory was left behind"

    # The restore that spools the RDB the same way stops before the target is touched.
    redis_plain.client().set("sentinel", "before")
    restore = run_module("redis_snapshot", dict(redis_plain.login, state="restore", flush=True,
                                                spool_dir=str(tiny_spool), **dict(repo, **key)))
    assert restore.get("failed"), restore
    assert str(tiny_spool) in restore["msg"] and "is full" in restore["msg"], restore["msg"]
    assert "before the target was touched" in restore["msg"] and "corrupt" not in restore["msg"], restore["msg"]
    assert redis_plain.client().get("sentinel") == b"before"
    assert redis_plain.client().dbsize() == keys + 1
    assert os.listdir(tiny_spool) == []

    # The backup was good all along: with room to unpack it, it verifies.
    roomy = run_module("redis_snapshot", dict(repo, state="verify", level="load", spool_dir=str(tmp_path), **key))
    assert not roomy.get("failed") and roomy["verified"][0]["details"]["keys"] == {"db0": keys}, roomy


def test_a_full_data_directory_stops_a_file_restore_before_redis_is_stopped(service_factory: t.Any,
                                                                            tmp_path: Path) -> None:
    workdir = service_factory.workdir("redis-full-datadir")
    server = RedisServer(workdir, name="redis-full-datadir")
    mount_tmpfs(server.datadir, "size=1m,mode=0755")
    try:
        service_factory.add(server)
        server.client().set("small", "1")
        repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "datadir"}
        # A snapshot of a bigger server restored into this one: its RDB does not fit the data directory.
        other = service_factory.add(RedisServer(service_factory.workdir("redis-big"), name="redis-big"))
        fill_incompressible(other)
        backup = run_module("redis_snapshot", dict(other.login, **repo))
        assert not backup.get("failed"), backup
        marker = tmp_path / "stopped"
        stop = ["sh", "-c", 'touch "$1"', "stop", str(marker)]
        start = ["true"]
        result = run_module("redis_snapshot", dict(server.login, state="restore", method="file", stop_command=stop,
                                                   start_command=start, **repo))
        assert result.get("failed"), result
        msg = result["msg"]
        assert str(server.datadir) in msg and "is full" in msg and "before Redis was stopped" in msg, msg
        assert "corrupt" not in msg and "truncated" not in msg, msg
        assert not marker.exists(), "the server was stopped although the RDB could not be staged"
        assert server.client().get("small") == b"1"
        assert sorted(os.listdir(server.datadir)) == [], os.listdir(server.datadir)
    finally:
        server.stop()
        subprocess.run(["umount", str(server.datadir)], check=False)


def test_a_deep_spool_dir_still_loads(redis_plain: RedisServer, tmp_path: Path) -> None:
    """The local server's unix socket path is limited to 108 bytes; a deep spool_dir must not make a good
    RDB look unloadable."""
    populate(redis_plain, count=20)
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "deep"}
    assert not run_module("redis_snapshot", dict(redis_plain.login, **repo)).get("failed")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    verified = run_module("redis_snapshot", dict(repo, state="verify", level="load", spool_dir=str(deep)))
    assert not verified.get("failed") and verified["verified"][0]["ok"], verified
    assert os.listdir(deep) == []


def test_tls_against_the_plain_port_says_the_server_does_not_speak_tls(redis_plain: RedisServer,
                                                                       tmp_path: Path) -> None:
    args = dict(redis_plain.login, tls=True, connect_timeout=2, wait_timeout=3600,
                repository="file://%s" % (tmp_path / "repo"))
    started = time.monotonic()
    result = run_module("redis_snapshot", args)
    elapsed = time.monotonic() - started
    assert result.get("failed"), result
    assert "does not speak TLS" in result["msg"] and "127.0.0.1:%d" % redis_plain.port in result["msg"], result["msg"]
    assert "unexpected" not in result["msg"] and redis_plain.password not in json.dumps(result)
    # Bounded by connect_timeout (2 s), not by the transfer or wait timeouts (300 s, 3600 s).
    assert elapsed < 60, elapsed


def test_backup_over_tls_and_certificate_checks(redis_tls: RedisServer, tmp_path: Path) -> None:
    redis_tls.client().set("tls-key", "v")
    repo = {"repository": "file://%s" % (tmp_path / "repo"), "set": "tls"}
    ok = run_module("redis_snapshot", dict(redis_tls.tls_login, **repo))
    assert not ok.get("failed"), ok
    assert ok["manifest"]["redis"]["keys"] == {"db0": 1}
    unverified = dict(redis_tls.tls_login, validate_certs=False, **repo)
    unverified.pop("ca_certs")
    assert not run_module("redis_snapshot", unverified).get("failed")
    other_ca = make_tls_files(tmp_path / "other-ca", common_name="someone-else")
    wrong = run_module("redis_snapshot", dict(redis_tls.tls_login, ca_certs=str(other_ca.ca_file), **repo))
    assert wrong.get("failed") and "certificate" in wrong["msg"] and "failed verification" in wrong["msg"], wrong["msg"]
    assert redis_tls.password not in json.dumps(wrong)
