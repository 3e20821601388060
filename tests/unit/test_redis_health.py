"""The pure parts of redis_health (options, thresholds, the judging functions, the cgroup limit) and the
command renaming of the Redis client."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    RedisConnection, UnknownCommand, parse_info)
from ansible_collections.runbook.ops.plugins.module_utils._redis_health import (
    AclDenials, Exposure, Interval, RedisHealthOptions, container_memory_limit, interval_of, judge_acl_denials,
    judge_aof, judge_fragmentation, judge_memory, judge_rdb, judge_replication, judge_risky_config, judge_slowlog,
    slow_entry)
from tests.harness.tasks import InvalidParams, make_task

WHERE = "server/r:6379"
MB = 1024 * 1024


def opts(**params) -> RedisHealthOptions:
    return make_task("redis_health", RedisHealthOptions.from_params, params).options


TH = opts().thresholds


def info(**fields) -> dict:
    return parse_info("\r\n".join("%s:%s" % item for item in fields.items()))


def test_defaults_and_threshold_units():
    assert TH["memory"].warning == 80 and TH["memory"].critical == 90
    assert TH["slow_command"].warning == 0.01 and TH["fork_time"].warning == 0.5
    assert TH["replication_lag_bytes"].critical == 100 * MB
    assert TH["hit_ratio"].lower_is_worse and TH["hit_ratio"].warning is None
    assert opts().checks[0] == "reachability" and opts().previous is None
    with pytest.raises(RunbookError, match="memory_critical must be at least as high"):
        opts(thresholds={"memory_warning": 95, "memory_critical": 90})
    with pytest.raises(RunbookError, match="slow_command_warning"):
        opts(thresholds={"slow_command_warning": "soon"})
    with pytest.raises(InvalidParams):
        opts(checks=["memory", "nonsense"])


def test_previous_must_be_the_counters_of_a_run():
    counters = {"run_id": "abc", "uptime_s": 10, "evicted_keys": 1, "expired_keys": 2, "rejected_connections": 0,
                "keyspace_hits": 5, "keyspace_misses": 1, "slowlog_last_id": 7}
    previous = opts(previous=counters).previous
    assert previous is not None and previous.slowlog_last_id == 7 and previous.acl_denials is None
    with pytest.raises(RunbookError, match="previous.evicted_keys"):
        opts(previous=dict(counters, evicted_keys="many"))
    with pytest.raises(RunbookError, match="previous.run_id"):
        opts(previous={"uptime_s": 1})


def test_command_names_are_checked_and_upper_cased():
    connection = opts(command_names={"bgsave": "HIPAA_BGSAVE_i9j0k1l2"}).connection
    assert connection.command_names == {"BGSAVE": "HIPAA_BGSAVE_i9j0k1l2"}
    with pytest.raises(RunbookError, match="not a command name"):
        opts(command_names={"BGSAVE": "two words"})
    with pytest.raises(RunbookError, match="not a Redis command name"):
        opts(command_names={"BG SAVE": "X"})


def test_renamed_commands_go_out_under_their_server_name_and_unknown_ones_say_what_to_set():
    ours, theirs = socket.socketpair()
    try:
        conn = RedisConnection(ours, "r:6379", command_names={"BGSAVE": "HIPAA_BGSAVE_i9j0k1l2"})
        theirs.sendall(b"+Background saving started\r\n-ERR unknown command 'config', with args beginning with: 'GET' \r\n")
        assert conn.call("bgsave") == "Background saving started"
        with pytest.raises(UnknownCommand) as raised:
            conn.call("CONFIG", "GET", "dir")
        sent = theirs.recv(4096)
        assert b"HIPAA_BGSAVE_i9j0k1l2" in sent and b"bgsave" not in sent.lower().replace(b"hipaa_bgsave", b"")
        assert "CONFIG is disabled or renamed on Redis at r:6379" in raised.value.text
        assert "command_names: {CONFIG:" in raised.value.text
    finally:
        ours.close()
        theirs.close()


def test_memory_is_read_with_the_eviction_policy():
    noeviction = judge_memory(info(used_memory=95 * MB, maxmemory=100 * MB, maxmemory_policy="noeviction"),
                              None, TH["memory"], WHERE)
    assert noeviction["severity"] == "critical" and "OOM" in noeviction["message"]
    cache = judge_memory(info(used_memory=99 * MB, maxmemory=100 * MB, maxmemory_policy="allkeys-lru"), None,
                         TH["memory"], WHERE)
    assert cache["severity"] == "info" and "evicted" in cache["message"]
    volatile = judge_memory(parse_info("used_memory:%d\nmaxmemory:%d\nmaxmemory_policy:volatile-lru\n"
                                       "db0:keys=10,expires=2,avg_ttl=0" % (85 * MB, 100 * MB)), None, TH["memory"], WHERE)
    assert volatile["severity"] == "warning" and "2 of 10 keys" in volatile["message"]
    container = judge_memory(info(used_memory=230 * MB, maxmemory=0), 256 * MB, TH["memory"], WHERE)
    assert container["severity"] == "warning" and "container" in container["message"]
    nothing = judge_memory(info(used_memory=1 * MB, maxmemory=0, total_system_memory=64 * 1024 * MB), None,
                           TH["memory"], WHERE)
    assert nothing["severity"] == "info" and "host memory is not one" in nothing["message"]


def test_fragmentation_needs_enough_memory_and_catches_swapping():
    small = judge_fragmentation(info(used_memory=MB, mem_fragmentation_ratio=8.0), TH["fragmentation"], WHERE)
    assert small["severity"] == "ok"
    assert judge_fragmentation(info(used_memory=500 * MB, mem_fragmentation_ratio=1.8), TH["fragmentation"],
                               WHERE)["severity"] == "warning"
    swapped = judge_fragmentation(info(used_memory=500 * MB, mem_fragmentation_ratio=0.7), TH["fragmentation"], WHERE)
    assert swapped["severity"] == "warning" and "swapped" in swapped["message"]


def test_rdb_and_aof_status():
    failed = judge_rdb(info(rdb_last_bgsave_status="err", rdb_changes_since_last_save=5, rdb_last_save_time=1000),
                       "3600 1", 5000.0, TH["rdb_age"], WHERE)
    assert failed["severity"] == "critical" and "last BGSAVE failed" in failed["message"]
    stale = judge_rdb(info(rdb_last_bgsave_status="ok", rdb_changes_since_last_save=5, rdb_last_save_time=1000),
                      "3600 1", 1000.0 + 3 * 3600, TH["rdb_age"], WHERE)
    assert stale["severity"] == "warning"
    clean = judge_rdb(info(rdb_last_bgsave_status="ok", rdb_changes_since_last_save=0, rdb_last_save_time=1000),
                      "3600 1", 1e6, TH["rdb_age"], WHERE)
    assert clean["severity"] == "ok"
    memory_only = judge_rdb(info(rdb_changes_since_last_save=5, rdb_last_save_time=1000, aof_enabled=0), "", 1e6,
                            TH["rdb_age"], WHERE)
    assert memory_only["severity"] == "info" and "only in memory" in memory_only["message"]
    assert judge_aof(info(aof_enabled=1, aof_last_write_status="err"), WHERE)["severity"] == "critical"
    assert judge_aof(info(aof_enabled=1, aof_last_write_status="ok", aof_last_bgrewrite_status="err"),
                     WHERE)["severity"] == "warning"


def test_replication_lag_in_bytes_on_a_master_and_link_on_a_replica():
    master = info(role="master", connected_slaves=2, master_repl_offset=5 * MB,
                  slave0="ip=10.0.0.2,port=6379,state=online,offset=%d,lag=0" % (5 * MB),
                  slave1="ip=10.0.0.3,port=6379,state=online,offset=%d,lag=1" % (3 * MB))
    found = {f["object"]: f for f in judge_replication(master, TH, WHERE)}
    assert found["replica/10.0.0.2:6379"]["severity"] == "ok"
    behind = found["replica/10.0.0.3:6379"]
    assert behind["severity"] == "warning" and behind["details"]["lag_bytes"] == 2 * MB
    replica = info(role="slave", master_host="10.0.0.1", master_port=6379, master_link_status="down",
                   master_link_down_since_seconds=120, master_sync_in_progress=0)
    (down,) = judge_replication(replica, TH, WHERE)
    assert down["severity"] == "critical" and "down for 2m" in down["message"]


def test_slowlog_keeps_command_names_only_and_reads_incrementally():
    raw = [[12, 1700000000, 2_000_000, [b"EVAL", b"return 'secret-script'", b"0", b"secret-arg"], b"10.0.0.9:5000", b""],
           [11, 1699999999, 30_000, [b"CONFIG", b"SET", b"requirepass", b"s3cret"], b"10.0.0.9:5001", b"admin"],
           [10, 1699999998, 40_000, [b"KEYS", b"user:*"], b"10.0.0.9:5002", b""],
           [9, 1699999997, 500, [b"GET", b"k"], b"10.0.0.9:5003", b""]]
    entries = [slow_entry(item) for item in raw]
    assert [e.command for e in entries] == ["EVAL", "CONFIG SET", "KEYS", "GET"]
    assert "secret" not in repr(entries) and "s3cret" not in repr(entries) and "user:*" not in repr(entries)
    found = {f["object"]: f for f in judge_slowlog(entries, None, TH["slow_command"], WHERE)}
    assert found["command/EVAL"]["severity"] == "critical" and found["command/KEYS"]["severity"] == "warning"
    assert "command/GET" not in found
    newer = judge_slowlog(entries, 11, TH["slow_command"], WHERE)
    assert [f["object"] for f in newer] == ["command/EVAL"]
    dropped = judge_slowlog(entries[:1], 3, TH["slow_command"], WHERE)
    assert any("8 slowlog entries were dropped" in f["message"] for f in dropped)


def test_interval_restarts_with_the_server():
    now = info(run_id="b", uptime_in_seconds=100, evicted_keys=50, expired_keys=0, rejected_connections=0,
               keyspace_hits=0, keyspace_misses=0)
    previous = opts(previous={"run_id": "a", "uptime_s": 50, "evicted_keys": 40, "expired_keys": 0,
                              "rejected_connections": 0, "keyspace_hits": 0, "keyspace_misses": 0}).previous
    assert interval_of(now, previous).since == "server start" and interval_of(now, previous).deltas["evicted_keys"] == 50
    same = opts(previous={"run_id": "b", "uptime_s": 50, "evicted_keys": 40, "expired_keys": 0,
                          "rejected_connections": 0, "keyspace_hits": 0, "keyspace_misses": 0}).previous
    interval = interval_of(now, same)
    assert interval.since == "previous run" and interval.seconds == 50 and interval.deltas["evicted_keys"] == 10
    denials = judge_acl_denials(AclDenials(7, {"app/command": 7}), 5, interval, TH["acl_denials"], WHERE)
    assert denials["severity"] == "warning" and denials["details"]["denials"] == 2
    quiet = judge_acl_denials(AclDenials(5, {}), 5, Interval(10, "previous run", {}), TH["acl_denials"], WHERE)
    assert quiet["severity"] == "ok"


def test_risky_configuration():
    exposed = judge_risky_config(Exposure("* -::*", "no", ["on", "nopass"], ["FLUSHALL", "DEBUG"], "no"), WHERE)
    severities = {(f["object"], f["severity"]) for f in exposed}
    assert ("user/default", "critical") in severities and ("config/protected-mode", "warning") in severities
    allowed = [f for f in exposed if "may run" in f["message"]][0]
    assert allowed["details"]["dangerous_commands"] == ["FLUSHALL"]  # DEBUG is off by enable-debug-command
    local = judge_risky_config(Exposure("127.0.0.1 -::1", "yes", ["on", "nopass"], [], "no"), WHERE)
    assert [f["severity"] for f in local] == ["ok"]
    disabled = judge_risky_config(Exposure("0.0.0.0", "yes", ["off", "nopass"], ["FLUSHALL"], "no"), WHERE)
    assert [f["severity"] for f in disabled] == ["ok"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_container_memory_limit_from_the_process_cgroup(tmp_path: Path, version: str):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "42").mkdir(parents=True)
    if version == "v1":
        (proc / "42" / "cgroup").write_text("5:cpu:/\n4:memory:/kubepods/pod1/redis\n")
        limit = root / "memory" / "kubepods" / "pod1" / "redis" / "memory.limit_in_bytes"
    else:
        (proc / "42" / "cgroup").write_text("0::/kubepods/pod1/redis\n")
        limit = root / "kubepods" / "pod1" / "redis" / "memory.max"
    limit.parent.mkdir(parents=True)
    limit.write_text("268435456\n")
    assert container_memory_limit(42, str(proc), str(root)) == 256 * MB
    limit.write_text("max\n" if version == "v2" else "9223372036854771712\n")
    assert container_memory_limit(42, str(proc), str(root)) is None
    assert container_memory_limit(43, str(proc), str(root)) is None
