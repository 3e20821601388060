"""Benchmark k8s_backup against the runbooks' kubectl loop, a kubernetes.core k8s_info playbook and the
floor, in one run; then its restore against ``kubectl apply -f`` of the runbooks' YAML.

Starts its own API server (tests/harness/k8s.py) with audit logging, seeds N namespaces x (D
Deployments, S Services, C ConfigMaps, K Secrets, R cert-manager Certificates), then times:

* ``kubectl``: the runbooks' way, ``kubectl get all,configmaps,secrets -n <ns> -o yaml > <ns>.yaml``
  for each namespace;
* ``k8s_info``: a playbook with one ``kubernetes.core.k8s_info`` task per kind k8s_backup reads, each
  across all namespaces (kubernetes.core from the ``ansible`` package, as bench_k8s_health installs it);
* ``floor``: one raw LIST per kind k8s_backup reads (across all namespaces), bodies to /dev/null, from
  one Python process with one keep-alive connection;
* ``k8s_backup``: the module as Ansible runs it (its own process), zstd + age, into a file repository;
  beside it, the start-up of that process alone (a parameter refused before any request is sent),
  a cost the floor does not pay;
* ``velero``: when ``velero`` and ``velero-plugin-for-aws`` are built (see k8s_backup_velero.py), a
  Velero 1.18 server process with a moto S3 bucket backs up the same namespaces (from the creation of
  its Backup until Velero marks it finished); otherwise the reason it is absent is printed.

Restore: every namespace into a fresh one, ``kubectl apply -f`` of the runbooks' YAML (namespace
rewritten) against ``k8s_backup state=restore`` with ``namespace_mapping``.

Request counts come from the API server's audit log. Targets: backup >= 5x faster than the kubectl
loop, within 1.3x of the floor, O(kinds) requests; restore >= 3x faster than kubectl apply.
Usage: .venv/bin/python benchmarks/bench_k8s_backup.py [--namespaces 20] [--runs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import k8s_backup_velero  # noqa: E402
from benchmarks.bench_k8s_health import kubernetes_core  # noqa: E402
from tests.harness.collection import ensure_collection_path, run_module, run_playbook  # noqa: E402
from tests.harness.k8s import KubeCluster, binary_dir, certificate, deployment, namespace, service  # noqa: E402

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import discover, select_types  # noqa: E402

FLOOR = r"""
import json, sys, http.client, ssl
host, port, token, ca, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca))
with open("/dev/null", "wb") as sink:
    for path in paths:
        conn.request("GET", path, headers={"Authorization": "Bearer " + token, "Accept": "application/json"})
        sink.write(conn.getresponse().read())
"""


def seed(cluster: KubeCluster, names: t.Sequence[str], sizes: argparse.Namespace) -> None:
    import datetime

    def one(ns: str) -> None:
        client = cluster.client()
        namespace(client, ns, {"runbook.bench": "true"})
        for i in range(sizes.deployments):
            client.create("apps/v1", "deployments", deployment("app-%02d" % i, ns, 1))
        for i in range(sizes.services):
            client.create("v1", "services", service("svc-%02d" % i, ns, {"app": "app-%02d" % i}))
        for i in range(sizes.configmaps):
            client.create("v1", "configmaps", {"metadata": {"name": "cm-%02d" % i, "namespace": ns},
                                               "data": {"config.yaml": "key: value\n" * 20}})
        for i in range(sizes.secrets):
            client.create("v1", "secrets", {"metadata": {"name": "secret-%02d" % i, "namespace": ns},
                                            "stringData": {"password": "bench-%s-%d" % (ns, i)}})
        for i in range(sizes.custom):
            body = certificate("cert-%02d" % i, ns, datetime.datetime.now(datetime.timezone.utc)
                               + datetime.timedelta(days=30))
            client.create("cert-manager.io/v1", "certificates", body)
        client.close()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(one, names))
    print("seeded %d namespaces in %.1fs" % (len(names), time.monotonic() - started), flush=True)
    time.sleep(10)  # let the ReplicaSets and Pods appear (the runbooks' `get all` lists them)


def audited(cluster: KubeCluster, action: t.Callable[[], t.Any]) -> t.Tuple[float, int, t.Any]:
    offset = cluster.audit_offset()
    started = time.monotonic()
    outcome = action()
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    return elapsed, cluster.audit_requests(offset, user="admin")[0], outcome


def kubectl(cluster: KubeCluster, *args: str, stdout: t.Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary_dir() / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args],
                          stdout=stdout, stderr=subprocess.PIPE, check=False)


def kubectl_loop(cluster: KubeCluster, names: t.Sequence[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for ns in names:
        with open(out / ("%s.yaml" % ns), "wb") as handle:
            proc = kubectl(cluster, "get", "all,configmaps,secrets", "-n", ns, "-o", "yaml", stdout=handle)
            if proc.returncode:
                raise SystemExit(proc.stderr.decode())


def k8s_info(cluster: KubeCluster, kinds: t.Sequence[t.Tuple[str, str]], workdir: Path, collections: str) -> None:
    playbook = workdir / "k8s_info.yml"
    playbook.write_text(json.dumps([{"name": "Every kind with kubernetes.core.k8s_info", "hosts": "localhost",
                                     "gather_facts": False, "tasks": [{
                                         "name": "List one kind", "kubernetes.core.k8s_info": {
                                             "kubeconfig": str(cluster.kubeconfig), "api_version": "{{ item.0 }}",
                                             "kind": "{{ item.1 }}"},
                                         "loop": [list(k) for k in kinds], "register": "facts"}]}]))
    proc = run_playbook(playbook, env={"ANSIBLE_COLLECTIONS_PATH": collections})
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:])


def floor(cluster: KubeCluster, paths: t.Sequence[str]) -> None:
    host, port = cluster.server[len("https://"):].rsplit(":", 1)
    auth = cluster.auth()
    subprocess.run([sys.executable, "-c", FLOOR, host, port, auth["api_key"], auth["ca_cert"], json.dumps(list(paths))],
                   check=True)


def module(args: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    result = run_module("k8s_backup", args)
    if result.get("failed"):
        raise SystemExit("k8s_backup failed: %s" % result.get("msg"))
    return dict(result)


def startup(args: t.Dict[str, t.Any]) -> None:
    """The module refusing a parameter before it sends anything: process start and imports."""
    result = run_module("k8s_backup", dict(args, namespaces=["Not_A_Namespace"]))
    if not result.get("failed") or result.get("api_requests"):
        raise SystemExit("the start-up probe was not refused before any request: %s" % result.get("msg"))


def velero_rows(cluster: KubeCluster, names: t.Sequence[str], workdir: Path, runs: int) -> t.List[str]:
    """Velero's backups of ``names`` (best of ``runs``), or why there are none."""
    reason = k8s_backup_velero.absent()
    if reason:
        return ["Velero: absent: %s" % reason]
    velero = k8s_backup_velero.Velero(cluster, workdir / "velero")
    try:
        velero.start()
        measured = [audited(cluster, lambda run=run: velero.backup("bench-%d" % run, names)) for run in range(runs)]
    except Exception as exc:  # pylint: disable=broad-except
        # Whatever stopped Velero is reported in the table; our own columns stand without it.
        return ["Velero: did not run: %s: %s" % (type(exc).__name__, exc)]
    finally:
        velero.stop()
    best = min(measured, key=lambda row: row[0])
    status = best[2]["status"]
    return ["%-52s %8.2f %10d   (phase %s, %s items; our %d status polls not counted)" % (
        "Velero %s (server process, aws plugin, moto S3)" % k8s_backup_velero.VERSION, best[0],
        best[1] - best[2]["ours"], status.get("phase"), (status.get("progress") or {}).get("itemsBackedUp"),
        best[2]["ours"] - 1)]


def apply_restore(cluster: KubeCluster, names: t.Sequence[str], yaml_dir: Path, suffix: str) -> int:
    """``kubectl apply -f`` of each namespace's YAML into ``<ns><suffix>``; returns the failed applies."""
    failures = 0
    for ns in names:
        kubectl(cluster, "create", "namespace", ns + suffix)
        text = (yaml_dir / ("%s.yaml" % ns)).read_text().replace("namespace: %s\n" % ns, "namespace: %s%s\n" % (ns, suffix))
        proc = subprocess.run([str(binary_dir() / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"],
                              input=text.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        failures += proc.stderr.decode().count("\n") if proc.returncode else 0
    return failures


def main() -> int:  # pylint: disable=too-many-locals
    # One linear script of measurements; splitting it would only scatter the table it prints.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--deployments", type=int, default=25)
    parser.add_argument("--services", type=int, default=25)
    parser.add_argument("--configmaps", type=int, default=25)
    parser.add_argument("--secrets", type=int, default=10)
    parser.add_argument("--custom", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    core = kubernetes_core()
    collections = os.pathsep.join([str(ensure_collection_path()), str(core)])
    workdir = Path(tempfile.mkdtemp(prefix="runbook-bench-k8s-backup-"))
    cluster = KubeCluster(workdir, audit=True)
    try:
        cluster.start()
        names = ["bench-%02d" % i for i in range(args.namespaces)]
        seed(cluster, names, args)
        types = select_types(discover(cluster.client()), [], [])[0]
        kinds = [(r.api_version, r.kind) for r in types]
        paths = ["/api/%s/%s" % (r.api_version, r.plural) if "/" not in r.api_version else
                 "/apis/%s/%s" % (r.api_version, r.plural) for r in types]
        backup_args = dict(cluster.auth(), namespaces=names, set="bench", repository="file://%s" % (workdir / "repo"),
                           encryption_recipients=[str(identity.to_public())])
        rows: t.Dict[str, t.List[t.Tuple[float, int, t.Any]]] = {
            k: [] for k in ("kubectl", "k8s_info", "floor", "k8s_backup", "startup")}
        for run in range(args.runs):
            rows["kubectl"].append(audited(cluster, lambda: kubectl_loop(cluster, names, workdir / "yaml")))
            rows["k8s_info"].append(audited(cluster, lambda: k8s_info(cluster, kinds, workdir, collections)))
            rows["floor"].append(audited(cluster, lambda: floor(cluster, paths)))
            rows["k8s_backup"].append(audited(cluster, lambda: module(backup_args)))
            rows["startup"].append(audited(cluster, lambda: startup(backup_args)))
            print("run %d: %s" % (run + 1, ", ".join("%s %.2fs/%d req" % (k, v[-1][0], v[-1][1]) for k, v in rows.items())),
                  flush=True)
        best = {k: min(v, key=lambda r: r[0]) for k, v in rows.items()}
        made = best["k8s_backup"][2]
        print()
        print("cluster: %d namespaces x (%d Deployments, %d Services, %d ConfigMaps, %d Secrets, %d Certificates); "
              "%d kinds read" % (args.namespaces, args.deployments, args.services, args.configmaps, args.secrets,
                                 args.custom, len(types)))
        print("k8s_backup stored %d objects (%d bytes raw, %d stored)" % (
            made["manifest"]["kubernetes"]["object_count"], made["manifest"]["raw_size"], made["manifest"]["size"]))
        print("%-52s %8s %10s" % ("backup", "wall (s)", "requests"))
        labels = {"kubectl": "kubectl get all,configmaps,secrets -o yaml (per ns)", "k8s_info": "kubernetes.core.k8s_info (one task per kind)",
                  "floor": "floor: one raw LIST per kind to /dev/null", "k8s_backup": "runbook.ops.k8s_backup (zstd + age)",
                  "startup": "  of which module process start-up (no request)"}
        for key, label in labels.items():
            print("%-52s %8.2f %10d" % (label, best[key][0], best[key][1]))
        for line in velero_rows(cluster, names, workdir, args.runs):
            print(line)
        ours = best["k8s_backup"][0]
        print("vs kubectl loop: %.1fx faster (target >= 5x: %s)" % (best["kubectl"][0] / ours, "met" if best["kubectl"][0] / ours >= 5 else "NOT met"))
        print("vs floor: %.2fx of the floor (target <= 1.3x: %s); without the module start-up: %.2fx" % (
            ours / best["floor"][0], "met" if ours / best["floor"][0] <= 1.3 else "NOT met",
            (ours - best["startup"][0]) / best["floor"][0]))
        print("requests: %d for %d kinds and %d namespaces" % (best["k8s_backup"][1], len(types), len(names)))

        kubectl_restore = audited(cluster, lambda: apply_restore(cluster, names, workdir / "yaml", "-kc"))
        mapping = {ns: ns + "-rb" for ns in names}
        restore_args = dict(cluster.auth(), state="restore", set="bench", namespace_mapping=mapping,
                            repository=backup_args["repository"], encryption_identity=str(identity))
        ours_restore = audited(cluster, lambda: run_module("k8s_backup", restore_args))
        result = ours_restore[2]
        print()
        print("%-52s %8s %10s" % ("restore (20 fresh namespaces)", "wall (s)", "requests"))
        print("%-52s %8.2f %10d   (%d error lines)" % ("kubectl apply -f <runbooks' YAML>", kubectl_restore[0],
                                                       kubectl_restore[1], kubectl_restore[2]))
        print("%-52s %8.2f %10d   (failed: %s; %s)" % (
            "runbook.ops.k8s_backup state=restore", ours_restore[0], ours_restore[1],
            bool(result.get("failed")), result.get("msg", "")[:120]))
        ratio = kubectl_restore[0] / ours_restore[0]
        print("restore vs kubectl apply: %.1fx faster (target >= 3x: %s)" % (ratio, "met" if ratio >= 3 else "NOT met"))
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
