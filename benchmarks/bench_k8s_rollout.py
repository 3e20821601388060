"""Benchmark the ordered startup of three Deployments x three replicas, in one run, three ways:

* ``k8s_rollout``: one ``runbook.ops.k8s_rollout`` task, ``action: start`` with three ``steps``;
* ``kubectl``: the runbook's script, ``kubectl scale deployment X --replicas=3`` then
  ``kubectl wait --for=condition=available --timeout=60s deployment/X`` per workload (kubectl from
  the Kubernetes binaries cache);
* ``k8s_scale``: a playbook of three kubernetes.core ``k8s_scale`` tasks with ``wait: true``
  (benchmarks/k8s_rollout_k8s_scale.yml; kubernetes.core from the ``ansible`` package, see
  bench_k8s_health).

Each starts from its own namespace with the Deployments at 0. A watcher in this process sees every
Deployment's replicas change and the moment it settles, so the rollouts' own duration is known and
our time above it is reported per step. Targets: under 0.5 s per step above the rollouts' own
duration; at least 3x faster end to end than the kubernetes.core playbook.
Usage: .venv/bin/python benchmarks/bench_k8s_rollout.py
"""

from __future__ import annotations

import os
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

from benchmarks.bench_k8s_health import kubernetes_core  # noqa: E402
from tests.harness.collection import ensure_collection_path, run_module, run_playbook  # noqa: E402
from tests.harness.k8s import KubeCluster, binary_dir, deployment, namespace  # noqa: E402

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils._k8s_watch import watch  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.runbook.ops.plugins.module_utils._rollout import settled  # noqa: E402  pylint: disable=wrong-import-position

WORKLOADS = ["redis", "policy-service", "auth-service"]


class Watcher(threading.Thread):
    """Records, per Deployment, when its spec asked for 3 replicas and when it first settled."""

    def __init__(self, cluster: KubeCluster, ns: str) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client()
        self.ns = ns
        self.asked: t.Dict[str, float] = {}
        self.done: t.Dict[str, float] = {}
        listed = self.client.request("GET", "/apis/apps/v1/namespaces/%s/deployments" % ns)
        self.version = listed["metadata"]["resourceVersion"]

    def run(self) -> None:
        while len(self.done) < len(WORKLOADS):
            for kind, obj in watch(self.client, "/apis/apps/v1/namespaces/%s/deployments" % self.ns,
                                   {"resourceVersion": self.version}, 120):
                now = time.monotonic()
                if kind not in ("ADDED", "MODIFIED"):
                    continue
                self.version = obj["metadata"]["resourceVersion"]
                name = obj["metadata"]["name"]
                if obj["spec"].get("replicas") == 3:
                    self.asked.setdefault(name, now)
                    if name not in self.done and settled("Deployment", obj, obj["metadata"]["generation"])[0]:
                        self.done[name] = now

    def own_duration(self) -> float:
        return sum(self.done[n] - self.asked[n] for n in WORKLOADS)


def prepare(cluster: KubeCluster, ns: str, record: bool) -> Watcher:
    admin = cluster.client()
    namespace(admin, ns)
    for name in WORKLOADS:
        body = deployment(name, ns, 0)
        if record:  # what a k8s_rollout stop leaves behind
            body["metadata"]["annotations"] = {"runbook.ops/stopped": '{"replicas": 3, "hpa": null, "services": []}'}
        admin.create("apps/v1", "deployments", body)
    time.sleep(1.0)
    watcher = Watcher(cluster, ns)
    watcher.start()
    return watcher


def finish(watcher: Watcher, label: str, elapsed: float) -> t.Dict[str, float]:
    watcher.join(30)
    missing = [n for n in WORKLOADS if n not in watcher.done]
    own = watcher.own_duration() if not missing else float("nan")
    late = [n for n in WORKLOADS if n in watcher.done and watcher.done[n] > watcher.started_at + elapsed]
    note = " (returned before %s settled)" % ", ".join(late) if late else ""
    print("%-12s %6.2fs end to end, rollouts' own %5.2fs, above them %5.3fs per step%s" % (
        label, elapsed, own, (elapsed - own) / len(WORKLOADS), note), flush=True)
    return {"elapsed": elapsed, "own": own, "per_step": (elapsed - own) / len(WORKLOADS)}


def ours(cluster: KubeCluster) -> t.Dict[str, float]:
    watcher = prepare(cluster, "bench-ours", record=True)
    watcher.started_at = time.monotonic()  # type: ignore[attr-defined]
    result = run_module("k8s_rollout", dict(cluster.auth(), namespace="bench-ours", action="start",
                                            steps=[{"targets": ["Deployment/%s" % n]} for n in WORKLOADS]))
    elapsed = time.monotonic() - watcher.started_at  # type: ignore[attr-defined]
    if result.get("failed"):
        raise SystemExit("k8s_rollout failed: %s" % result["msg"])
    print("k8s_rollout  module's own duration_s %.3f, api_requests %d" % (result["duration_s"], result["api_requests"]))
    return finish(watcher, "k8s_rollout", elapsed)


def kubectl(cluster: KubeCluster) -> t.Dict[str, float]:
    watcher = prepare(cluster, "bench-kubectl", record=False)
    binary = str(binary_dir() / "kubectl")
    script = "".join("%s scale deployment %s --replicas=3 -n bench-kubectl\n%s wait --for=condition=available "
                     "--timeout=60s deployment/%s -n bench-kubectl\n" % (binary, n, binary, n) for n in WORKLOADS)
    watcher.started_at = time.monotonic()  # type: ignore[attr-defined]
    subprocess.run(["bash", "-e", "-c", script], check=True, capture_output=True,
                   env=dict(os.environ, KUBECONFIG=str(cluster.kubeconfig)))
    return finish(watcher, "kubectl", time.monotonic() - watcher.started_at)  # type: ignore[attr-defined]


def k8s_scale(cluster: KubeCluster, collections: str) -> t.Dict[str, float]:
    watcher = prepare(cluster, "bench-k8s-scale", record=False)
    watcher.started_at = time.monotonic()  # type: ignore[attr-defined]
    proc = run_playbook(REPO / "benchmarks" / "k8s_rollout_k8s_scale.yml",
                        extra_vars={"kubeconfig": str(cluster.kubeconfig), "namespace": "bench-k8s-scale",
                                    "workloads": WORKLOADS}, env={"ANSIBLE_COLLECTIONS_PATH": collections})
    elapsed = time.monotonic() - watcher.started_at  # type: ignore[attr-defined]
    if proc.returncode != 0:
        raise SystemExit("k8s_scale playbook failed:\n%s" % proc.stdout[-3000:])
    return finish(watcher, "k8s_scale", elapsed)


def main() -> int:
    collections = "%s:%s" % (kubernetes_core(), REPO / ".venv" / "collections")
    workdir = Path(tempfile.mkdtemp(prefix="runbook-bench-rollout-"))
    cluster = KubeCluster(workdir)
    try:
        cluster.start()
        print("ordered startup, %d Deployments x 3 replicas, one step each" % len(WORKLOADS), flush=True)
        mine, script, playbook = ours(cluster), kubectl(cluster), k8s_scale(cluster, collections)
        print("k8s_rollout above the rollouts: %.3fs per step (target < 0.5s): %s" % (
            mine["per_step"], "met" if mine["per_step"] < 0.5 else "MISSED"))
        print("k8s_rollout vs kubectl script: %.1fx; vs kubernetes.core k8s_scale playbook: %.1fx (target >= 3x): %s" % (
            script["elapsed"] / mine["elapsed"], playbook["elapsed"] / mine["elapsed"],
            "met" if playbook["elapsed"] >= 3 * mine["elapsed"] else "MISSED"))
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
