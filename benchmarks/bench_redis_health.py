"""Benchmark redis_health against the runbook's redis-cli round and community.general redis_info, in one run.

One private redis-server (password, some keys, a few slow commands in the slowlog), then, in turn and
``--runs`` times each, one health check by:

* the runbook: ``redis-cli ping; redis-cli INFO memory; redis-cli INFO stats`` (three processes, the
  password in ``REDISCLI_AUTH``);
* ``community.general.redis_info`` (raw ``INFO``, no judgement), from the ``ansible`` package on PyPI
  installed with ``--no-deps`` under the cache directory (see ``bench_k8s_health.kubernetes_core``);
* ``runbook.ops.redis_health``.

Both modules run as Ansible runs a module on the managed host (one Python process with its arguments
file), so controller overhead, the same for both, is left out. Prints the wall time per check (median
and best) and, per concern of the runbooks that ``redis_health`` judges (``docs/redis_health.md``),
whether each tool's output holds the facts to judge it (``data``) or judges it (``judged``).

Usage: .venv/bin/python benchmarks/bench_redis_health.py [--runs 10] [--keys 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_k8s_health import ANSIBLE_VERSION, kubernetes_core  # noqa: E402
from tests.harness.collection import ansible_env, ensure_collection_path  # noqa: E402
from tests.harness.services import RedisServer  # noqa: E402

Output = t.Dict[str, t.Any]


class Concern(t.NamedTuple):
    """One concern: the redis_health check that judges it, and the INFO fields a reader needs to judge it
    by hand (empty when INFO alone cannot tell: the facts come from other commands or the host)."""

    name: str
    check: str
    fields: t.Tuple[str, ...]


CONCERNS = (
    Concern("reachable (connect, AUTH, PING)", "reachability", ()),
    Concern("role (failover happened?)", "role", ("role",)),
    Concern("memory against maxmemory, with the policy", "memory", ("used_memory", "maxmemory", "maxmemory_policy")),
    Concern("memory against the container limit (maxmemory 0)", "memory", ()),
    Concern("evictions / expirations", "evictions", ("evicted_keys", "expired_keys")),
    Concern("fragmentation", "fragmentation", ("mem_fragmentation_ratio",)),
    Concern("connections against maxclients", "connections", ("connected_clients", "maxclients")),
    Concern("rejected connections", "rejected_connections", ("rejected_connections",)),
    Concern("blocked clients", "blocked_clients", ("blocked_clients",)),
    Concern("RDB last save status and age", "rdb_save",
            ("rdb_last_bgsave_status", "rdb_last_save_time", "rdb_changes_since_last_save")),
    Concern("AOF status and last write", "aof", ("aof_enabled", "aof_last_write_status")),
    Concern("fork time", "fork_time", ("latest_fork_usec",)),
    Concern("replication link and offset lag", "replication", ("connected_slaves", "master_repl_offset")),
    Concern("slow commands (slowlog)", "slowlog", ()),
    Concern("keyspace hit ratio", "hit_ratio", ("keyspace_hits", "keyspace_misses")),
    Concern("ACL denials", "acl_denials", ("acl_access_denied_auth", "acl_access_denied_cmd")),
    Concern("risky configuration (no password, protected-mode, dangerous commands)", "risky_config", ()),
)


def prepare(server: RedisServer, keys: int) -> None:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set("cache:%d" % i, "v" * 64, ex=3600 if i % 2 else None)
    pipe.execute()
    client.config_set("slowlog-log-slower-than", 0)  # every command below lands in the slowlog
    for i in range(5):
        client.get("cache:%d" % i)
        client.get("missing:%d" % i)
    client.config_set("slowlog-log-slower-than", 10000)


def timed(argv: t.Sequence[str], env: t.Mapping[str, str]) -> t.Tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=dict(env), check=False)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit("%s failed (%s): %s %s" % (argv[0], proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    return elapsed, proc.stdout


def runbook_round(server: RedisServer, cli: str) -> t.Tuple[float, Output]:
    """The runbook's three redis-cli calls; the output is the parsed ``field:value`` lines of all three."""
    env = dict(os.environ, REDISCLI_AUTH=server.password)
    base = [cli, "-h", server.host, "-p", str(server.port)]
    total, text = 0.0, []
    for command in (["ping"], ["INFO", "memory"], ["INFO", "stats"]):
        elapsed, out = timed(base + command, env)
        total += elapsed
        text.append(out)
    fields: Output = {"PONG": "PONG" in text[0]}
    for line in "".join(text[1:]).splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.strip().split(":", 1)
            fields[key] = value
    return total, fields


def module_round(module: str, args: Output, workdir: Path, env: t.Mapping[str, str]) -> t.Tuple[float, Output]:
    path = workdir / ("%s.json" % module.rsplit(".", 1)[-1])
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_tmpdir=str(workdir))}))
    elapsed, out = timed([sys.executable, "-m", module, str(path)], env)
    return elapsed, json.loads(out)


def coverage(label: str, result: Output) -> t.List[str]:
    """Per concern: ``judged``, ``data`` or ``-`` for one tool's output."""
    marks = []
    for concern in CONCERNS:
        if label == "redis_health":
            marks.append("judged" if concern.check in result.get("checks_run", []) else "-")
            continue
        info = result.get("info", result)
        if concern.check == "reachability":
            marks.append("data" if info.get("PONG") or info.get("redis_version") else "-")
        elif concern.fields and all(field in info for field in concern.fields):
            marks.append("data")
        else:
            marks.append("-")
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="checks per tool; median and best are shown")
    parser.add_argument("--keys", type=int, default=20000, help="keys in the server (half with a TTL)")
    options = parser.parse_args()

    cli = shutil.which("redis-cli")
    if not cli:
        raise SystemExit("redis-cli not found (install Debian's redis-tools)")
    general = kubernetes_core()  # the same ansible package also holds community.general
    collections = os.pathsep.join([str(ensure_collection_path()), str(general)])
    env = ansible_env({"ANSIBLE_COLLECTIONS_PATH": collections})
    env["PYTHONPATH"] = os.pathsep.join([collections, env.get("PYTHONPATH", "")])
    workdir = Path(tempfile.mkdtemp(prefix="runbook-bench-redis-health-"))
    server = RedisServer(workdir / "redis", name="bench-redis-health")
    try:
        server.start()
        prepare(server, options.keys)
        login = server.login
        tools: t.Dict[str, t.Callable[[], t.Tuple[float, Output]]] = {
            "runbook redis-cli x3": lambda: runbook_round(server, cli),
            "redis_info": lambda: module_round("ansible_collections.community.general.plugins.modules.redis_info",
                                               login, workdir, env),
            "redis_health": lambda: module_round("ansible_collections.runbook.ops.plugins.modules.redis_health",
                                                 login, workdir, env),
        }
        times: t.Dict[str, t.List[float]] = {name: [] for name in tools}
        outputs: t.Dict[str, Output] = {}
        for _run in range(options.runs):
            for name, tool in tools.items():  # interleaved: a busy moment of the machine hits all three
                elapsed, outputs[name] = tool()
                times[name].append(elapsed)
        health = outputs["redis_health"]
        print("redis-server %s, %d keys; %d checks per tool; community.general from ansible %s"
              % (outputs["redis_info"]["info"].get("redis_version"), options.keys, options.runs, ANSIBLE_VERSION))
        print("redis_health: status %s, summary %s, %d findings"
              % (health.get("status"), health.get("summary"), len(health.get("findings", []))))
        print()
        print("%-24s %12s %10s" % ("wall time per check", "median (s)", "best (s)"))
        for name, values in times.items():
            print("%-24s %12.3f %10.3f" % (name, statistics.median(values), min(values)))
        print()
        labels = {"runbook redis-cli x3": "runbook", "redis_info": "redis_info", "redis_health": "redis_health"}
        columns = {name: coverage(labels[name], outputs[name]) for name in tools}
        print("%-72s %-10s %-10s %-12s" % ("concern", "runbook", "redis_info", "redis_health"))
        for index, concern in enumerate(CONCERNS):
            print("%-72s %-10s %-10s %-12s" % (concern.name, *(columns[name][index] for name in tools)))
        print("%-72s %-10s %-10s %-12s" % ("covered (data or judged) of %d" % len(CONCERNS),
                                           *("%d" % sum(mark != "-" for mark in columns[name]) for name in tools)))
        print("%-72s %-10s %-10s %-12s" % ("judged", *("%d" % columns[name].count("judged") for name in tools)))
        return 0
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
