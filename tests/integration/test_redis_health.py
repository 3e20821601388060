"""redis_health against real redis-server instances: plain, TLS with a client certificate, ACL users with and
without INFO, a replica whose master is gone, memory at maxmemory (noeviction and evicting), rejected
connections at maxclients, a failing BGSAVE, the slowlog, a container memory limit, and no secret at -vvvv."""

from __future__ import annotations

import json
import os
import socket
import time
import typing as t
from pathlib import Path

import pytest
import redis as redis_py

from tests.harness.collection import run_module, run_playbook
from tests.harness.fixtures import (
    REDIS_HEALTH_PASSWORD, REDIS_HEALTH_USER, REDIS_NOINFO_PASSWORD, REDIS_NOINFO_USER)
from tests.harness.services import RedisServer

ALL_CHECKS = ["reachability", "role", "memory", "evictions", "fragmentation", "connections", "rejected_connections",
              "blocked_clients", "rdb_save", "aof", "fork_time", "replication", "slowlog", "hit_ratio", "acl_denials",
              "risky_config"]


def by_check(result: dict, check: str) -> t.List[dict]:
    return [f for f in result["findings"] if f["check"] == check]


def one(result: dict, check: str) -> dict:
    found = by_check(result, check)
    assert len(found) == 1, (check, found)
    return found[0]


def health(args: dict, **kwargs: t.Any) -> dict:
    result = run_module("redis_health", args, **kwargs)
    assert "unexpected" not in result.get("msg", ""), result
    return result


def test_plain_server_every_check_and_counters_since_the_previous_run(redis_plain: RedisServer) -> None:
    client = redis_plain.client()
    for i in range(1200):
        client.get("missing:%d" % i)
    first = health(redis_plain.login)
    assert not first.get("failed") and not first["changed"], first
    assert first["checks_run"] == ALL_CHECKS
    assert first["server"]["version"].startswith("7.") and first["server"]["role"] == "master"
    assert one(first, "reachability")["severity"] == "ok"
    # requirepass protects the default user, but it may still run FLUSHALL, CONFIG, KEYS, SHUTDOWN.
    risky = one(first, "risky_config")
    assert risky["severity"] == "warning" and "FLUSHALL" in risky["message"] and "KEYS" in risky["message"], risky
    assert one(first, "hit_ratio")["details"]["keyspace_misses"] >= 1200
    assert redis_plain.password not in json.dumps(first)
    counters = first["counters"]
    assert counters["run_id"] == first["server"]["run_id"] and counters["keyspace_misses"] >= 1200

    second = health(dict(redis_plain.login, previous=counters))
    assert one(second, "evictions")["details"]["since"] == "previous run"
    hits = one(second, "hit_ratio")
    assert hits["details"]["since"] == "previous run" and hits["details"]["keyspace_misses"] < 1200, hits
    # Check mode reads the same way and changes nothing.
    checked = health(redis_plain.login, check_mode=True)
    assert not checked["changed"] and checked["checks_run"] == ALL_CHECKS


def test_unreachable_server_is_critical_and_fail_on_keeps_the_findings(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = {"login_host": "127.0.0.1", "login_port": port, "login_password": "not-shown-123", "connect_timeout": 2}
    result = health(args)
    assert not result.get("failed") and result["status"] == "critical", result
    assert one(result, "reachability")["severity"] == "critical" and result["checks_run"] == ["reachability"]
    failing = health(dict(args, fail_on="critical"))
    assert failing.get("failed") and "fail_on: critical" in failing["msg"] and failing["findings"], failing
    assert "not-shown-123" not in json.dumps(failing)


def test_tls_with_client_certificate_and_the_wrong_port_both_ways(redis_hardened: RedisServer) -> None:
    cert = {"client_cert_file": str(redis_hardened.client_cert_file),
            "client_key_file": str(redis_hardened.client_key_file)}
    tls = dict(redis_hardened.tls_login, **cert)
    ok = health(tls)
    assert one(ok, "reachability")["severity"] == "ok" and ok["server"] is not None, ok
    assert ok["status"] in ("ok", "info", "warning"), ok
    no_cert = health(dict(redis_hardened.tls_login, connect_timeout=3))
    assert one(no_cert, "reachability")["severity"] == "critical", no_cert
    tls_on_plain = health(dict(redis_hardened.login, tls=True, connect_timeout=2, **cert))
    assert "does not speak TLS" in one(tls_on_plain, "reachability")["message"], tls_on_plain
    plain_on_tls = health(dict(redis_hardened.tls_login, tls=False, connect_timeout=2))
    assert "set tls: true" in one(plain_on_tls, "reachability")["message"], plain_on_tls
    for result in (ok, no_cert, tls_on_plain, plain_on_tls):
        assert redis_hardened.password not in json.dumps(result)


def test_acl_user_without_info_gets_unknown_findings_naming_the_permission(redis_hardened: RedisServer) -> None:
    limited = dict(redis_hardened.login, login_user=REDIS_NOINFO_USER, login_password=REDIS_NOINFO_PASSWORD)
    result = health(limited)
    assert not result.get("failed") and result["status"] == "unknown", result
    assert one(result, "reachability")["severity"] == "ok"
    assert "+info" in one(result, "memory")["message"] and REDIS_NOINFO_USER in one(result, "memory")["message"]
    assert "+slowlog" in one(result, "slowlog")["message"]
    assert "+config|get" in one(result, "risky_config")["message"]
    assert result["server"] is None
    # The documented least-privilege user runs every check.
    least = health(dict(redis_hardened.login, login_user=REDIS_HEALTH_USER, login_password=REDIS_HEALTH_PASSWORD))
    assert not [f for f in least["findings"] if f["severity"] == "unknown"], least["findings"]
    assert least["checks_run"] == ALL_CHECKS
    # Its earlier denials are counted for the ACL LOG reader.
    denials = one(least, "acl_denials")
    assert denials["severity"] == "warning" and "noinfo/command" in json.dumps(denials["details"]), denials


def test_replica_link_down_when_its_master_stops(service_factory: t.Any) -> None:
    master = service_factory.add(RedisServer(service_factory.workdir("redis-master"), name="redis-master"))
    replica = service_factory.add(RedisServer(
        service_factory.workdir("redis-replica"), name="redis-replica",
        extra_config=["replicaof 127.0.0.1 %d" % master.port, "masterauth %s" % master.password]))
    master.client().set("k", "v")
    deadline = time.monotonic() + 30
    while replica.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica never linked"
        time.sleep(0.1)
    on_master = health(dict(master.login, expected_role="master", checks=["role", "replication"]))
    (link,) = by_check(on_master, "replication")
    assert link["object"] == "replica/127.0.0.1:%d" % replica.port and "lag_bytes" in link["details"], link
    up = health(dict(replica.login, expected_role="replica", checks=["role", "replication"]))
    assert up["status"] == "ok", up
    master.stop()
    down = health(dict(replica.login, expected_role="master", checks=["role", "replication"],
                       thresholds={"link_down_critical": "0s"}))
    link = one(down, "replication")
    assert link["severity"] == "critical" and "link to master 127.0.0.1:%d is down" % master.port in link["message"], link
    assert one(down, "role")["severity"] == "critical" and "failover" in one(down, "role")["message"]


def _fill_until_oom(client: t.Any, prefix: str) -> int:
    written = 0
    try:
        for i in range(100000):
            client.set("%s:%d" % (prefix, i), os.urandom(1024))
            written += 1
    except redis_py.exceptions.OutOfMemoryError:
        return written
    raise AssertionError("maxmemory was never reached")


def test_memory_at_maxmemory_under_noeviction_then_evicting(service_factory: t.Any) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-full"), name="redis-full"))
    client = server.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 4 * 1024 * 1024)
    written = _fill_until_oom(client, "full")
    assert written > 100
    full = health(dict(server.login, checks=["memory", "evictions"]))
    memory = one(full, "memory")
    assert memory["severity"] == "critical" and "OOM" in memory["message"], memory
    assert memory["details"]["maxmemory_policy"] == "noeviction" and memory["details"]["percent"] >= 90
    assert one(full, "evictions")["severity"] == "ok"

    client.config_set("maxmemory-policy", "allkeys-lru")
    for i in range(3000):
        client.set("more:%d" % i, os.urandom(1024))
    evicting = health(dict(server.login, checks=["memory", "evictions"], previous=full["counters"]))
    evictions = one(evicting, "evictions")
    assert evictions["severity"] == "warning" and evictions["details"]["evicted_keys"] > 1000, evictions
    assert evictions["details"]["since"] == "previous run"
    # Under allkeys-lru, being at the limit is how a cache works: not a warning by itself.
    assert one(evicting, "memory")["severity"] in ("ok", "info"), one(evicting, "memory")


def test_rejected_connections_at_maxclients(service_factory: t.Any) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-maxclients"), name="redis-maxclients",
                                             extra_config=["maxclients 6"]))
    held = []
    for _index in range(6):
        conn = server.client(single_connection_client=True)
        conn.ping()
        held.append(conn)
    for _index in range(3):
        with pytest.raises(redis_py.exceptions.ConnectionError):
            server.client(single_connection_client=True).ping()
    held.pop().close()  # room for the module's own connection
    result = health(dict(server.login, checks=["connections", "rejected_connections"]))
    rejected = one(result, "rejected_connections")
    assert rejected["severity"] == "warning" and rejected["details"]["rejected_connections"] >= 3, rejected
    connections = one(result, "connections")
    assert connections["severity"] == "critical" and connections["details"]["maxclients"] == 6, connections
    for conn in held:
        conn.close()


def test_failing_bgsave_is_critical(service_factory: t.Any) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-badsave"), name="redis-badsave"))
    client = server.client()
    client.set("unsaved", "1")
    # The data directory cannot take the RDB: its target name is a directory (root ignores file modes).
    dump = server.datadir / "dump.rdb"
    dump.mkdir()
    (dump / "blocker").write_text("x")
    client.bgsave()
    deadline = time.monotonic() + 30
    while client.info("persistence")["rdb_last_bgsave_status"] == "ok":
        assert time.monotonic() < deadline, "BGSAVE did not fail"
        time.sleep(0.1)
    result = health(dict(server.login, checks=["rdb_save", "fork_time"]))
    rdb = one(result, "rdb_save")
    assert rdb["severity"] == "critical" and "last BGSAVE failed" in rdb["message"], rdb
    assert rdb["details"]["rdb_changes_since_last_save"] >= 1
    assert one(result, "fork_time")["details"]["latest_fork_usec"] > 0


SLOW_SCRIPT = "local i = 0 while i < 4000000 do i = i + 1 end return ARGV[1]"


def test_slowlog_names_the_command_never_its_arguments(service_factory: t.Any) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-slow"), name="redis-slow",
                                             extra_config=["slowlog-log-slower-than 5000"]))
    client = server.client()
    secret = "card-4111111111111111"
    for _index in range(2):
        client.eval(SLOW_SCRIPT, 0, secret)
    result = health(dict(server.login, checks=["slowlog"], thresholds={"slow_command_warning": "5ms"}))
    (slow,) = [f for f in by_check(result, "slowlog") if f["object"] == "command/EVAL"]
    assert slow["severity"] == "warning" and slow["details"]["count"] == 2, slow
    assert slow["details"]["max_duration_us"] >= 5000
    assert secret not in json.dumps(result) and "4000000" not in json.dumps(result)
    # Read incrementally: the same entries are not reported again.
    again = health(dict(server.login, checks=["slowlog"], previous=result["counters"],
                        thresholds={"slow_command_warning": "5ms"}))
    assert [f["object"] for f in by_check(again, "slowlog")] == ["server/127.0.0.1:%d" % server.port], again


def _memory_cgroup(pid: int) -> Path:
    for line in Path("/proc/%d/cgroup" % pid).read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        if number == "0" and controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / path.lstrip("/")
    raise AssertionError("no memory cgroup for pid %d" % pid)


def test_no_maxmemory_is_judged_against_the_container_memory_limit(service_factory: t.Any) -> None:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-cgroup"), name="redis-cgroup"))
    pid = int(server.client().info("server")["process_id"])
    parent = _memory_cgroup(pid)
    child = parent / ("runbook-redis-health-%d" % pid)
    child.mkdir()
    v1 = (child / "memory.limit_in_bytes").exists()
    try:
        (child / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(256 * 1024 * 1024))
        (child / "cgroup.procs").write_text(str(pid))
        result = health(dict(server.login, checks=["memory"]))
        memory = one(result, "memory")
        assert memory["details"]["container_limit"] == 256 * 1024 * 1024, memory
        assert "container's memory limit" in memory["message"] and "set maxmemory" in memory["message"], memory
    finally:
        server.stop()
        child.rmdir()


def test_no_password_client_key_or_slowlog_argument_at_vvvv(redis_hardened: RedisServer, tmp_path: Path) -> None:
    secret_arg = "ssn-078-05-1120"
    redis_hardened.client().config_set("slowlog-log-slower-than", "0")
    try:
        redis_hardened.client().set("patient:1", secret_arg)
    finally:
        redis_hardened.client().config_set("slowlog-log-slower-than", "10000")
    key_line = [line for line in Path(redis_hardened.client_key_file).read_text().splitlines() if "PRIVATE" not in line][0]
    tls = dict(redis_hardened.tls_login, client_cert_file=str(redis_hardened.client_cert_file),
               client_key_file=str(redis_hardened.client_key_file))
    tasks = [
        {"name": "health over TLS", "runbook.ops.redis_health": dict(tls, thresholds={"slow_command_warning": 0}),
         "register": "out"},
        {"name": "health with a wrong password", "runbook.ops.redis_health": dict(tls, login_password="wrong-pass-789"),
         "ignore_errors": True},
        {"name": "health refused", "runbook.ops.redis_health": dict(tls, bogus=1), "ignore_errors": True},
    ]
    playbook = tmp_path / "health.yml"
    playbook.write_text(json.dumps([{"name": "Redis health", "hosts": "localhost", "gather_facts": False,
                                     "tasks": tasks}]))
    output = run_playbook(playbook, verbosity=4).stdout
    assert "PLAY RECAP" in output and "command/SET" in output, output[-3000:]
    for secret in (redis_hardened.password, "wrong-pass-789", key_line, secret_arg):
        assert secret not in output.split("PLAY [", 1)[1], secret
