"""Benchmark: redis_snapshot method=replication against ``redis-cli --rdb <file>`` on about 1 GiB.

One run, one private redis-server: fill it with pipelined SETs of random values, then time
``redis-cli --rdb`` (the baseline), redis_snapshot to a file:// repository with compression off, and
with zstd. Prints wall time and peak memory (ru_maxrss of the process) beside the baseline.
Targets: raw fetch within 1.2x of redis-cli; peak memory under 100 MiB.

Run from the repository root: .venv/bin/python benchmarks/bench_redis_snapshot.py [--gib 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.collection import ansible_env  # noqa: E402
from tests.harness.services import RedisServer  # noqa: E402


def fill(server: RedisServer, gib: float) -> int:
    client = server.client()
    value_hex = 512  # 1 KiB values of random hex: compresses about 2x, like real cache payloads
    count = int(gib * (1 << 30) / (2 * value_hex + 40))
    batch = 5000
    for start in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(count, start + batch)):
            pipe.set("bench:%09d" % i, os.urandom(value_hex).hex())
        pipe.execute()
    return count


def run(argv: list, env: dict) -> tuple:
    """Wall time and peak RSS (MiB) of one child process.

    Linux carries the parent's RSS into a forked child's ru_maxrss (the high-water mark survives
    exec), so a child of this ~40 MiB benchmark process can never report less. When GNU time is
    installed the command runs under it (a tiny parent) and its %M is used; otherwise wait4's
    ru_maxrss, a floor of this process's own size, is reported.
    """
    gnu_time = shutil.which("time") if os.path.exists("/usr/bin/time") else None
    prefix = ["/usr/bin/time", "-f", "RUNBOOK_MAXRSS_KB=%M"] if gnu_time else []
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(prefix + argv, stdout=out, stderr=err, env=env)  # pylint: disable=consider-using-with
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        errors = err.read().decode("utf-8", "replace")
        if proc.returncode != 0:
            raise SystemExit("%s failed (%s): %s %s" % (argv[0], proc.returncode, out.read()[-2000:], errors[-2000:]))
        peak = usage.ru_maxrss / 1024.0
        for line in errors.splitlines():
            if line.startswith("RUNBOOK_MAXRSS_KB="):
                peak = int(line.split("=", 1)[1]) / 1024.0
        return elapsed, peak, out.read()


def module_argv(args: dict, workdir: Path) -> list:
    path = workdir / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_tmpdir=str(workdir))}))
    return [sys.executable, "-m", "ansible_collections.runbook.ops.plugins.modules.redis_snapshot", str(path)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=1.0, help="dataset size in GiB of used memory (default 1.0)")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server = RedisServer(workdir / "redis", name="bench-redis")
    try:
        server.start()
        started = time.monotonic()
        keys = fill(server, options.gib)
        info = server.client().info("memory")
        print("dataset: %d keys, used_memory %.2f GiB, filled in %.1f s"
              % (keys, info["used_memory"] / float(1 << 30), time.monotonic() - started))
        # Both sides start the transfer at once (the diskless default waits 5 s for more replicas).
        server.client().config_set("repl-diskless-sync-delay", "0")
        env = ansible_env({"REDISCLI_AUTH": server.password})
        rdb_file = workdir / "baseline.rdb"
        base_s, base_rss = run(["redis-cli", "-h", server.host, "-p", str(server.port), "--no-auth-warning",
                                "--rdb", str(rdb_file)], env)[:2]
        rdb_size = rdb_file.stat().st_size
        rdb_file.unlink()
        print("RDB size: %.1f MiB" % (rdb_size / 1048576.0))
        print("%-44s %9s %9s %12s %10s" % ("", "wall s", "vs cli", "peak MiB", "stored MiB"))
        print("%-44s %9.2f %9s %12.1f %10.1f" % ("redis-cli --rdb <file> (baseline)", base_s, "1.00x", base_rss,
                                                 rdb_size / 1048576.0))
        for label, compression in (("redis_snapshot replication, compression none", "none"),
                                   ("redis_snapshot replication, zstd", "zstd")):
            repo = workdir / ("repo-" + compression)
            args = dict(server.login, repository="file://%s" % repo, set="bench", compression=compression)
            seconds, rss, out = run(module_argv(args, workdir), env)
            result = json.loads(out)
            stored = result["manifest"]["size"] / 1048576.0
            print("%-44s %9.2f %8.2fx %12.1f %10.1f" % (label, seconds, seconds / base_s, rss, stored))
            shutil.rmtree(repo, ignore_errors=True)
        print("targets: replication with compression none <= 1.20x the baseline; peak memory < 100 MiB")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
