"""Benchmark k8s_health against gathering the same facts with kubernetes.core.k8s_info, in one run.

Starts its own API server (etcd, kube-apiserver, kube-controller-manager; tests/harness/k8s.py)
with audit logging, seeds N namespaces x (D Deployments whose ReplicaSets make P Pods in all,
S Services), marks every Pod Running and Ready, then times two playbooks end to end:

* ``k8s_health``: one ``runbook.ops.k8s_health`` task over every namespace
  (benchmarks/k8s_health_one_task.yml);
* ``k8s_info``: one ``kubernetes.core.k8s_info`` task per kind the health check reads, each across
  all namespaces (benchmarks/k8s_health_k8s_info.yml), from the ``ansible`` package on PyPI,
  installed with ``--no-deps`` under the cache directory (ansible-core stays the project's).

Request counts come from the API server's audit log (every request of the benchmark user), so both
sides are counted the same way. Target: k8s_health at least 10x faster.
Usage: .venv/bin/python benchmarks/bench_k8s_health.py [--namespaces 20] [--deployments 25] [--pods 100]
       [--services 25] [--runs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.collection import ensure_collection_path, run_playbook  # noqa: E402
from tests.harness.k8s import KubeCluster, deployment, namespace, service  # noqa: E402

ANSIBLE_VERSION = "12.3.0"  # the community package release that pairs with ansible-core 2.19
CACHE = Path(os.environ.get("RUNBOOK_CACHE", Path.home() / ".cache" / "runbook-ops"))


def kubernetes_core() -> Path:
    """A directory holding ``ansible_collections/kubernetes/core`` (the ``ansible`` package, no deps)."""
    target = CACHE / "bench" / ("ansible-" + ANSIBLE_VERSION)
    if (target / "ansible_collections" / "kubernetes" / "core").is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix="ansible-", dir=target.parent if target.parent.exists() else None))
    print("installing %s (collections only, --no-deps) into %s ..." % ("ansible==" + ANSIBLE_VERSION, target), flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), "ansible==" + ANSIBLE_VERSION],
                   check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class _Clients(threading.local):
    def __init__(self, cluster: KubeCluster) -> None:
        super().__init__()
        self.client = cluster.client()


def seed(cluster: KubeCluster, namespaces: int, deployments: int, pods: int, services: int, workers: int = 6) -> None:
    admin = cluster.client()
    replicas = max(1, pods // deployments)
    local = _Clients(cluster)
    names = ["bench-%02d" % i for i in range(namespaces)]

    def make_namespace(ns: str) -> None:
        namespace(local.client, ns, {"runbook.bench": "true"})
        for d in range(deployments):
            local.client.create("apps/v1", "deployments", deployment("app-%02d" % d, ns, replicas))
        for s in range(services):
            local.client.create("v1", "services", service("svc-%02d" % s, ns, {"app": "app-%02d" % (s % deployments)}))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(make_namespace, names))
    total = namespaces * deployments * replicas
    print("created %d namespaces, %d Deployments, %d Services in %.1fs; waiting for %d Pods ..."
          % (namespaces, namespaces * deployments, namespaces * services, time.monotonic() - started, total), flush=True)
    # KWOK runs the Pods as the ReplicaSets create them; wait for every Deployment to be ready.
    deadline = time.monotonic() + 600
    ready = 0
    while time.monotonic() < deadline:
        ready = sum(1 for d in admin.list("apps/v1", "deployments", page_size=1000)
                    if (d.get("status") or {}).get("readyReplicas") == replicas)
        if ready >= namespaces * deployments:
            break
        time.sleep(2)
    print("seeded in %.1fs: %d/%d Deployments ready" % (time.monotonic() - started, ready, namespaces * deployments),
          flush=True)


def timed_playbook(name: str, kubeconfig: Path, collections: str, cluster: KubeCluster) -> t.Tuple[float, int, str]:
    offset = cluster.audit_offset()
    started = time.monotonic()
    proc = run_playbook(REPO / "benchmarks" / name, extra_vars={"kubeconfig": str(kubeconfig)},
                        env={"ANSIBLE_COLLECTIONS_PATH": collections})
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (name, proc.stdout[-3000:]))
    time.sleep(0.5)  # let the audit backend flush
    requests = cluster.audit_requests(offset, user="admin")[0]
    marker = re.search(r"RUNBOOK_BENCH ([^\"]*)", proc.stdout)
    return elapsed, requests, marker.group(1) if marker else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--deployments", type=int, default=25, help="Deployments per namespace")
    parser.add_argument("--pods", type=int, default=100, help="Pods per namespace (made by the Deployments)")
    parser.add_argument("--services", type=int, default=25, help="Services per namespace")
    parser.add_argument("--runs", type=int, default=2, help="runs of each playbook; the best is compared")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running (prints its workdir)")
    args = parser.parse_args()

    core = kubernetes_core()
    collections = os.pathsep.join([str(ensure_collection_path()), str(core)])
    workdir = Path(tempfile.mkdtemp(prefix="runbook-bench-k8s-"))
    cluster = KubeCluster(workdir, audit=True)
    try:
        cluster.start()
        print("API server %s up in %.1fs" % (cluster.server, cluster.started_in), flush=True)
        seed(cluster, args.namespaces, args.deployments, args.pods, args.services)
        results: t.Dict[str, t.List[t.Tuple[float, int, str]]] = {"k8s_health": [], "k8s_info": []}
        for run in range(args.runs):
            for label, playbook in (("k8s_health", "k8s_health_one_task.yml"), ("k8s_info", "k8s_health_k8s_info.yml")):
                outcome = timed_playbook(playbook, cluster.kubeconfig, collections, cluster)
                results[label].append(outcome)
                print("run %d %-10s %7.2fs  %4d requests  %s" % (run + 1, label, outcome[0], outcome[1], outcome[2]),
                      flush=True)
        ours = min(results["k8s_health"])
        theirs = min(results["k8s_info"])
        print()
        print("cluster: %d namespaces x (%d Deployments, %d Pods, %d Services)"
              % (args.namespaces, args.deployments, args.pods, args.services))
        print("%-44s %8s %10s" % ("", "wall (s)", "requests"))
        print("%-44s %8.2f %10d" % ("runbook.ops.k8s_health (one task)", ours[0], ours[1]))
        print("%-44s %8.2f %10d" % ("kubernetes.core.k8s_info (12 tasks, baseline)", theirs[0], theirs[1]))
        ratio = theirs[0] / ours[0] if ours[0] else float("inf")
        print("speed-up: %.1fx (target >= 10x: %s)" % (ratio, "met" if ratio >= 10 else "NOT met"))
        return 0
    finally:
        if args.keep:
            print("cluster left running: python -m tests.harness.k8s stop %s" % workdir)
        else:
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
