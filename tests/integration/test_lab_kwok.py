"""KWOK as the node agent: workloads roll out by themselves, faults show as a kubelet would report
them, and logs, exec and port-forward reach this machine through the API server, wired the way
the lab wires its platforms. No test here writes a Pod status."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import typing as t
from pathlib import Path

import pytest

from tests.harness import kwok, platforms
from tests.harness.collection import run_module
from tests.harness.k8s import binary_dir, deployment, service, wait_for
from tests.harness.process import free_port, port_open


def kubectl(cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary_dir() / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def port_forward(cluster, ns: str, target: str, remote: int) -> t.Iterator[int]:
    """``kubectl port-forward`` in the background; yields the local port once it accepts."""
    local = free_port()
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [str(binary_dir() / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n", ns, "port-forward",
         "--address", "127.0.0.1", target, "%d:%d" % (local, remote)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or port_open("127.0.0.1", local), timeout=30,
                 what="kubectl port-forward %s to listen" % target)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield local
    finally:
        proc.terminate()
        proc.wait(10)


# ----------------------------------------------------------------------------------------------
# Workloads roll out by themselves


def test_workloads_roll_out_with_no_status_written_by_the_test(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    kube_admin.create("apps/v1", "deployments", deployment("web", ns, replicas=3))
    kube_admin.create("v1", "services", service("web", ns, {"app": "web"}))
    labels = {"app": "db"}
    kube_admin.create("apps/v1", "statefulsets", {
        "metadata": {"name": "db", "namespace": ns},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "db", "image": "pg"}]}}}})
    kube_admin.create("apps/v1", "daemonsets", {
        "metadata": {"name": "agent", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "agent", "image": "agent"}]}}}})
    kube_admin.create("batch/v1", "jobs", {
        "metadata": {"name": "migrate", "namespace": ns},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "migrate"}]}}}})

    for plural, name in (("deployments", "web"), ("statefulsets", "db"), ("daemonsets", "agent")):
        wait_for(lambda p=plural, n=name: kwok.rolled_out(kube_admin, p, ns, n), timeout=60,
                 what="%s/%s rolled out" % (plural, name))
    wait_for(lambda: (kube_admin.get("batch/v1", "jobs", "migrate", ns).get("status") or {}).get("succeeded") == 1,
             timeout=60, what="the Job to complete")

    pods = kube_admin.list("v1", "pods", ns, label_selector="app=web")
    assert len(pods) == 3
    assert {p["spec"]["nodeName"] for p in pods} == {kwok.NODE_NAME}
    assert all(p["status"]["phase"] == "Running" and p["status"].get("podIP") for p in pods)
    # The real EndpointSlice controller saw them Ready.
    slices = kube_admin.list("discovery.k8s.io/v1", "endpointslices", ns, label_selector="kubernetes.io/service-name=web")
    ready = [e for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
    assert len(ready) == 3

    # A rollout of a new template replaces every Pod, again with nobody writing status.
    old = {p["metadata"]["name"] for p in pods}
    kube_admin.rollout_restart("apps/v1", "deployments", "web", ns)
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "web")
             and not old & {p["metadata"]["name"] for p in kube_admin.list("v1", "pods", ns, label_selector="app=web")},
             timeout=60, what="the restarted Deployment to roll out")


def test_faults_by_annotation_and_image_tag(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    bodies = [kwok.pod("pull", ns, fault="imagepullbackoff"), kwok.pod("unready", ns, fault="unready"),
              kwok.pod("oom", ns, fault="oomkilled"), kwok.pod("crash", ns, image="example/worker:crashloop")]
    for body in bodies:
        kube_admin.create("v1", "pods", body, ns)
    pods = {b["metadata"]["name"]: wait_for(lambda n=b["metadata"]["name"]: kwok.played(kube_admin, ns, n),
                                            what="KWOK to play %s" % b["metadata"]["name"]) for b in bodies}

    def container(name: str) -> dict:
        return pods[name]["status"]["containerStatuses"][0]

    assert pods["pull"]["status"]["phase"] == "Pending"
    assert container("pull")["state"]["waiting"]["reason"] == "ImagePullBackOff"
    assert pods["unready"]["status"]["phase"] == "Running" and not kwok.pod_ready(kube_admin, ns, "unready")
    assert container("unready")["state"]["running"] and container("unready")["ready"] is False
    assert kwok.pod_ready(kube_admin, ns, "oom")
    assert container("oom")["lastState"]["terminated"]["reason"] == "OOMKilled" and container("oom")["restartCount"] == 1
    assert container("crash")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container("crash")["lastState"]["terminated"]["exitCode"] == 1


def test_crash_looping_image_is_reported_by_k8s_health(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    kube_admin.create("apps/v1", "deployments", deployment("worker", ns, replicas=1, image="example/worker:crashloop"))
    kube_admin.create("apps/v1", "deployments", deployment("api", ns, replicas=2))
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "api"), what="api rolled out")
    pod = wait_for(lambda: [p for p in kube_admin.list("v1", "pods", ns, label_selector="app=worker")
                            if (p.get("status") or {}).get("containerStatuses")], what="the worker Pod to start")[0]
    result = run_module("k8s_health", dict(kube_cluster.auth(), namespaces=[ns], checks=["workloads", "pods"]))
    assert "Traceback" not in result.stderr, result.stderr
    findings = {f["object"]: f for f in result["findings"]}
    crash = findings["Pod/%s/%s" % (ns, pod["metadata"]["name"])]
    assert crash["severity"] == "critical" and "CrashLoopBackOff" in crash["details"]["reasons"], crash
    assert findings["Deployment/%s/worker" % ns]["severity"] == "critical"
    assert "Deployment/%s/api" % ns not in findings
    assert result["status"] == "critical"


# ----------------------------------------------------------------------------------------------
# A platform wired as the lab wires it: logs, exec, port-forward through the API server


@pytest.fixture
def platform_ns(kube_cluster, kube_admin, postgres, redis_plain, redis_tls, tmp_path) -> t.Iterator[t.Tuple[str, dict]]:
    """The rust-security platform from the lab inventory, in a fresh namespace, its database
    ports led to the harness's PostgreSQL and Redis."""
    import uuid

    platform = dict(platforms.load()["rust-security"])
    ns = "p-" + uuid.uuid4().hex[:8]
    platform["platform_namespace"] = ns
    platform["platform_certificates"] = []
    endpoints = platforms.Endpoints(
        postgres=(postgres.host, postgres.port), redis=(redis_plain.host, redis_plain.port),
        redis_tls=(redis_tls.host, redis_tls.tls_port), logs=tmp_path / "logs", volumes=tmp_path / "volumes",
        exec_env={"LAB_MARKER": "from-the-lab", "PGPORT": str(postgres.port)}, exec_dir=tmp_path)
    values = {"auth-service-config": {"DATABASE_URL": "postgresql://lab", "REDIS_URL": "redis://lab"},
              "jwt-signing-keys": {"kid": "test"}}
    platforms.seed_platform(kube_admin, platform, endpoints, values)
    try:
        platforms.wait_ready(kube_admin, {"rust-security": platform}, timeout=90)
        yield ns, platform
    finally:
        kube_admin.delete("v1", "namespaces", ns, missing_ok=True)
        for name in ("lab-%s" % ns,):
            for plural in ("clusterportforwards", "clusterlogs", "clusterexecs"):
                kube_admin.delete(kwok.API, plural, name, missing_ok=True)
        for workload in platform["platform_workloads"]:
            for claim in platforms.claim_names(workload):
                kube_admin.delete("v1", "persistentvolumes", "lab-%s-%s" % (ns, claim), missing_ok=True)


def test_platform_objects_match_the_inventory(kube_admin, platform_ns):
    ns, platform = platform_ns
    for workload in platform["platform_workloads"]:
        plural = "deployments" if workload["kind"] == "Deployment" else "statefulsets"
        obj = kube_admin.get("apps/v1", plural, workload["name"], ns)
        assert obj["metadata"]["labels"]["app"] == workload["app"]
        assert obj["status"]["readyReplicas"] == workload["replicas"]
    assert kube_admin.get("v1", "pods", "redis-master-0", ns)["status"]["phase"] == "Running"
    claim = kube_admin.get("v1", "persistentvolumeclaims", "redis-data-redis-master-0", ns)
    assert claim["status"]["phase"] == "Bound"
    assert kube_admin.get("networking.k8s.io/v1", "ingresses", "auth-service-ingress", ns)
    assert kube_admin.get("v1", "configmaps", "policy-service-policies", ns)


def test_kubectl_logs_returns_the_log_file(kube_cluster, platform_ns, tmp_path):
    ns, _platform = platform_ns
    logs = kubectl(kube_cluster, "-n", ns, "logs", "deployment/auth-service")
    assert logs.returncode == 0, logs.stderr
    expected = (tmp_path / "logs" / ns / "auth-service.log").read_text().splitlines()
    assert logs.stdout.splitlines() == [line.split(" ", 3)[3] for line in expected]
    assert "ready to serve requests" in logs.stdout
    stamped = kubectl(kube_cluster, "-n", ns, "logs", "redis-master-0", "--timestamps")
    assert stamped.returncode == 0 and re.match(r"^\d{4}-\d\d-\d\dT", stamped.stdout), stamped.stderr


def test_kubectl_exec_runs_on_this_machine(kube_cluster, platform_ns, tmp_path):
    ns, _platform = platform_ns
    proc = kubectl(kube_cluster, "-n", ns, "exec", "statefulset/postgres", "--", "sh", "-c", "echo $LAB_MARKER; pwd")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["from-the-lab", str(tmp_path)]


def test_port_forward_to_the_postgres_service_reaches_postgresql(kube_cluster, platform_ns, postgres):
    ns, _platform = platform_ns
    with port_forward(kube_cluster, ns, "service/postgres", 5432) as local:
        env = dict(os.environ, PGPASSWORD=postgres.password)
        proc = subprocess.run([str(postgres.bin_dir / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(local),
                               "-U", postgres.user, "-d", "postgres", "-c", "select 'through ' || current_setting('port')"],
                              env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "through %d" % postgres.port


def test_port_forward_to_the_redis_pod_reaches_redis(kube_cluster, platform_ns, redis_plain):
    import redis

    ns, _platform = platform_ns
    with port_forward(kube_cluster, ns, "pod/redis-master-0", 6379) as local:
        client = redis.Redis(host="127.0.0.1", port=local, password=redis_plain.password, socket_timeout=10)
        assert client.ping() is True
        assert client.config_get("port")["port"] == str(redis_plain.port)


def test_kubectl_is_in_the_binary_cache():
    version = subprocess.run([str(Path(binary_dir()) / "kubectl"), "version", "--client", "-o", "json"],
                             capture_output=True, text=True, check=False)
    assert version.returncode == 0 and '"gitVersion": "v1.' in version.stdout, version.stdout + version.stderr
