"""Benchmark ``pg_dump`` through the Kubernetes tunnel against the same dump straight to the server, in one run.

Starts its own PostgreSQL, a real kube-apiserver (etcd, controller manager) and KWOK as the node
agent, whose Pod ``postgres-0`` (StatefulSet ``postgres`` behind Service ``postgres``) forwards
port 5432 to that PostgreSQL. It fills a database with ``--rows`` rows shaped like a platform's users
table (uuid, e-mail, jsonb, text, timestamp; 300,000 rows are about 85 MB, 3,000,000 about 850 MB),
then times, alternately and ``--repeat`` times each:

* ``direct``: ``pg_dump`` to ``127.0.0.1:<postgres port>``;
* ``tunnel``: the same ``pg_dump`` to the loopback port of ``KubernetesTunnel`` opened on
  ``service/postgres`` (client -> WebSocket -> kube-apiserver -> KWOK -> PostgreSQL);

* ``kubectl``: the same ``pg_dump`` through ``kubectl port-forward service/postgres`` (when kubectl
  is beside the other Kubernetes binaries): what a runbook does today;

for the custom format with its default compression (what a backup costs) and with ``-Z0`` (no
compression: the transport is all that differs), output discarded. Prints the median wall times
and the ratio tunnel/direct beside the target (at most 1.3x).

Usage: .venv/bin/python -m benchmarks.bench_k8s_tunnel [--rows 300000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
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

from tests.harness.collection import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import KubernetesTunnel  # noqa: E402
from tests.harness import k8s, kwok  # noqa: E402
from tests.harness.services import PostgresServer  # noqa: E402

TARGET_RATIO = 1.3
NAMESPACE = "rust-security"
SEED_SQL = """
CREATE TABLE users (id uuid PRIMARY KEY, email text NOT NULL, profile jsonb NOT NULL, note text,
                    created timestamptz NOT NULL);
INSERT INTO users
SELECT gen_random_uuid(), 'user' || (random() * 1e6)::int || '@example.com',
       jsonb_build_object('plan', (ARRAY['free', 'pro', 'team', 'enterprise'])[1 + g % 4],
                          'logins', (random() * 10000)::int, 'region', (ARRAY['eu-west-1', 'us-east-1'])[1 + g % 2]),
       repeat(md5(g::text), 1 + g % 3), now() - (g || ' s')::interval
  FROM generate_series(1, ROWS) g;
ANALYZE users;
"""


def dump_seconds(pg: PostgresServer, host: str, port: int, extra: t.Sequence[str]) -> float:
    env = dict(os.environ, PGPASSWORD=pg.password)
    argv = [str(pg.bin_dir / "pg_dump"), "-h", host, "-p", str(port), "-U", pg.user, "-d", "bench", "-Fc"] + list(extra)
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit("pg_dump to %s:%d exited %d: %s" % (host, port, proc.returncode, proc.stderr.decode().strip()))
    return elapsed


def start_platform(pg: PostgresServer, workdir: Path) -> k8s.KubeCluster:
    """The API server with KWOK; Pod port 5432 of namespace rust-security forwarded to ``pg``."""
    cluster = k8s.KubeCluster(workdir / "k8s").start()
    admin = cluster.client()
    k8s.namespace(admin, NAMESPACE)
    kwok.port_forward(admin, "bench-postgres", {5432: ("127.0.0.1", pg.port)}, namespaces=[NAMESPACE])
    admin.create("apps/v1", "statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "postgres", "namespace": NAMESPACE},
        "spec": {"replicas": 1, "serviceName": "postgres", "selector": {"matchLabels": {"app": "postgres"}},
                 "template": {"metadata": {"labels": {"app": "postgres"}}, "spec": {"containers": [{
                     "name": "postgres", "image": "postgres:15",
                     "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}]}]}}}})
    admin.create("v1", "services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "postgres", "namespace": NAMESPACE},
        "spec": {"selector": {"app": "postgres"}, "ports": [{"name": "sql", "port": 5432, "targetPort": "postgres"}]}})
    k8s.wait_for(lambda: kwok.rolled_out(admin, "statefulsets", NAMESPACE, "postgres"), timeout=90,
                 what="StatefulSet postgres rolled out")
    return cluster


def first_dump(pg: PostgresServer, tunnel: KubernetesTunnel, port: int, extra: t.Sequence[str]) -> None:
    """Dump once through the tunnel (KWOK picks its port-forward rule up from a watch: retry until it has)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            dump_seconds(pg, "127.0.0.1", port, extra)
            return
        except SystemExit:
            if time.monotonic() > deadline:
                raise
            tunnel.failures.clear()
            time.sleep(1)


@contextlib.contextmanager
def kubectl_port_forward(cluster: k8s.KubeCluster) -> t.Iterator[t.Optional[int]]:
    """``kubectl port-forward service/postgres :5432`` (what an SRE runs today), or None without kubectl."""
    kubectl = k8s.binary_dir() / "kubectl"
    if not kubectl.exists():
        yield None
        return
    proc = subprocess.Popen([str(kubectl), "--kubeconfig", str(cluster.kubeconfig), "-n", NAMESPACE, "port-forward",
                             "service/postgres", ":5432"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            raise SystemExit("kubectl port-forward did not start: %s" % line.strip())
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-k8s-tunnel-"))
    workdir.chmod(0o755)
    pg = PostgresServer(workdir / "pg")
    cluster = None
    try:
        pg.start()
        pg.psql("create database bench")
        started = time.monotonic()
        pg.psql(SEED_SQL.replace("ROWS", str(args.rows)), db="bench")
        size = pg.psql("select pg_size_pretty(pg_database_size('bench'))").strip()
        print("database: %d rows, %s (seeded in %.1fs)" % (args.rows, size, time.monotonic() - started))
        cluster = start_platform(pg, workdir)
        print("kubernetes: API server %s, KWOK Node %s" % (cluster.server, kwok.NODE_NAME))
        tunnel = KubernetesTunnel.from_params(dict(cluster.auth(), namespace=NAMESPACE, target="service/postgres",
                                                   port=5432))
        results: t.Dict[str, t.Dict[str, t.List[float]]] = {}
        with tunnel as (host, port), kubectl_port_forward(cluster) as kubectl_port:
            print("tunnel: %s -> 127.0.0.1:%d" % (tunnel.describe(), port))
            first_dump(pg, tunnel, port, ["-Z0"])
            routes = [("direct", pg.host, pg.port), ("tunnel", host, port)]
            if kubectl_port is not None:
                routes.append(("kubectl", "127.0.0.1", kubectl_port))
            for label, extra in (("pg_dump -Fc", []), ("pg_dump -Fc -Z0", ["-Z0"])):
                times = results.setdefault(label, {name: [] for name, _h, _p in routes})
                dump_seconds(pg, pg.host, pg.port, extra)  # warm the cache once
                for _run in range(args.repeat):
                    for name, route_host, route_port in routes:
                        times[name].append(dump_seconds(pg, route_host, route_port, extra))
        tunnel.check()
        print()
        print("%-18s %10s %10s %8s  %-12s %10s" % ("", "direct s", "tunnel s", "ratio", "target", "kubectl s"))
        for label, times in results.items():
            direct, through = statistics.median(times["direct"]), statistics.median(times["tunnel"])
            ratio = through / direct
            kubectl = "%10.2f" % statistics.median(times["kubectl"]) if times.get("kubectl") else "%10s" % "-"
            verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
            row = (label, direct, through, ratio, TARGET_RATIO, verdict, kubectl)
            print("%-18s %10.2f %10.2f %7.2fx  <= %.1fx %-6s %s" % row)
        print("(median of %d runs each, alternating; kubectl: kubectl port-forward service/postgres through the same "
              "API server, the baseline a runbook has today)" % args.repeat)
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
