"""k8s_rollout against the test cluster: KWOK runs the Pods, the real controller manager rolls
Deployments and StatefulSets out."""

from __future__ import annotations

import json
import threading
import signal
import typing as t
import uuid


from tests.harness import kwok
from tests.harness.collection import run_module
from tests.harness.k8s import KubeCluster, RESTRICTED_TOKEN, RESTRICTED_USER, namespace, service, wait_for
from tests.harness.platforms import workload_body
from tests.harness.process import free_port

# The rust-security platform's start order, as its inventory has it (data stores first).
ORDER = [
    {"kind": "StatefulSet", "name": "redis-master", "app": "redis", "replicas": 1, "port": 6379},
    {"kind": "Deployment", "name": "policy-service", "app": "policy-service", "replicas": 3, "port": 8080},
    {"kind": "Deployment", "name": "auth-service", "app": "auth-service", "replicas": 2, "port": 8080},
]
STEPS = [{"targets": ["%s/%s" % (w["kind"], w["name"])]} for w in ORDER]


def seed(client, ns: str, replicas: t.Optional[int] = None) -> None:
    for workload in ORDER:
        plural, body = workload_body(ns, dict(workload, replicas=workload["replicas"] if replicas is None else replicas))
        client.create("apps/v1", plural, body)
        client.create("v1", "services", service(workload["app"], ns, {"app": workload["app"]}, workload["port"]))


def settled(client, ns: str) -> None:
    for workload in ORDER:
        plural = "deployments" if workload["kind"] == "Deployment" else "statefulsets"
        wait_for(lambda p=plural, n=workload["name"]: kwok.rolled_out(client, p, ns, n), timeout=90,
                 what="%s/%s rolled out" % (plural, workload["name"]))


def rollout(cluster: KubeCluster, ns: str, **args: t.Any) -> t.Dict[str, t.Any]:
    return run_module("k8s_rollout", dict(cluster.auth(), namespace=ns, **args), timeout=300)


def spec_replicas(client, ns: str, kind: str, name: str) -> int:
    plural = "deployments" if kind == "Deployment" else "statefulsets"
    return int(client.get("apps/v1", plural, name, ns)["spec"]["replicas"])


def test_ordered_stop_with_drain_then_start_restores_exact_counts(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)
    settled(kube_admin, ns)
    stopped = rollout(kube_cluster, ns, action="stop", steps=STEPS, drain_seconds=1)
    assert not stopped.get("failed"), stopped
    # stop runs the steps in reverse: auth-service first, redis last
    assert [s["targets"] for s in stopped["steps"]] == [["Deployment/auth-service"], ["Deployment/policy-service"],
                                                        ["StatefulSet/redis-master"]]
    assert all(s["status"] == "done" for s in stopped["steps"])
    for workload in ORDER:
        assert spec_replicas(kube_admin, ns, workload["kind"], workload["name"]) == 0
        svc = kube_admin.get("v1", "services", workload["app"], ns)
        assert svc["spec"]["selector"]["runbook.ops/drained"] == workload["name"]
    pods = kube_admin.list("v1", "pods", ns)
    assert pods == [], [p["metadata"]["name"] for p in pods]
    record = stopped["record"]["Deployment/%s/auth-service" % ns]
    assert record["replicas"] == 2 and record["services"] == ["auth-service"]

    again = rollout(kube_cluster, ns, action="stop", steps=STEPS)
    assert not again.get("failed") and not again["changed"], again
    assert again["record"]["Deployment/%s/auth-service" % ns]["replicas"] == 2  # the first record is kept

    started = rollout(kube_cluster, ns, action="start", steps=STEPS, wait_timeout="90s")
    assert not started.get("failed"), started
    steps = started["steps"]
    assert [s["targets"][0] for s in steps] == ["StatefulSet/redis-master", "Deployment/policy-service",
                                                "Deployment/auth-service"]
    by_object = {e["object"]: e for e in started["targets"]}
    # each step was observed Ready before the next began
    for before, after in zip(steps, steps[1:]):
        ready = by_object["%s/%s/%s" % (before["targets"][0].split("/")[0], ns, before["targets"][0].split("/")[1])]["ready_at"]
        assert ready is not None and ready <= after["started_at"], (before, after)
    for workload in ORDER:
        obj = kube_admin.get("apps/v1", "deployments" if workload["kind"] == "Deployment" else "statefulsets",
                             workload["name"], ns)
        assert obj["spec"]["replicas"] == workload["replicas"]  # 1, 3 and the non-default 2
        assert obj["status"].get("readyReplicas") == workload["replicas"]
        assert "runbook.ops/stopped" not in (obj["metadata"].get("annotations") or {})
        svc = kube_admin.get("v1", "services", workload["app"], ns)
        assert svc["spec"]["selector"] == {"app": workload["app"]}
    assert started["api_requests"] > 0 and isinstance(started["duration_s"], float)


def test_all_true_stops_every_deployment_and_statefulset_and_status_reads_the_record(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)
    settled(kube_admin, ns)
    checked = run_module("k8s_rollout", dict(kube_cluster.auth(), namespace=ns, action="stop", all=True),
                         check_mode=True, diff=True)
    assert not checked.get("failed") and checked["changed"], checked
    assert spec_replicas(kube_admin, ns, "Deployment", "auth-service") == 2  # dry run only
    assert any(d["after"]["replicas"] == 0 and d["before"]["replicas"] == 2 for d in checked["diff"])
    stopped = rollout(kube_cluster, ns, action="stop", all=True)
    assert not stopped.get("failed"), stopped
    assert sorted(e["object"] for e in stopped["targets"]) == sorted(
        "%s/%s/%s" % (w["kind"], ns, w["name"]) for w in ORDER)
    status = rollout(kube_cluster, ns, action="status", all=True)
    assert not status.get("failed") and not status["changed"], status
    assert status["record"]["Deployment/%s/policy-service" % ns]["replicas"] == 3
    started = rollout(kube_cluster, ns, action="start", all=True, wait_timeout="90s")
    assert not started.get("failed"), started
    assert spec_replicas(kube_admin, ns, "Deployment", "policy-service") == 3


def test_scale_and_restart_wait_for_the_rollout(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)
    settled(kube_admin, ns)
    scaled = rollout(kube_cluster, ns, action="scale", replicas=4,
                     targets=["Deployment/auth-service", "StatefulSet/redis-master"])
    assert not scaled.get("failed"), scaled
    assert kube_admin.get("apps/v1", "statefulsets", "redis-master", ns)["status"]["readyReplicas"] == 4
    assert kube_admin.get("apps/v1", "deployments", "auth-service", ns)["status"]["availableReplicas"] == 4
    restarted = rollout(kube_cluster, ns, action="restart", targets=["Deployment/auth-service"])
    assert not restarted.get("failed"), restarted
    obj = kube_admin.get("apps/v1", "deployments", "auth-service", ns)
    assert "kubectl.kubernetes.io/restartedAt" in obj["spec"]["template"]["metadata"]["annotations"]
    assert obj["status"]["updatedReplicas"] == 4 and obj["status"]["replicas"] == 4


def test_update_to_a_crash_looping_image_rolls_back_and_names_the_reason(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)
    settled(kube_admin, ns)
    before = kube_admin.get("apps/v1", "deployments", "auth-service", ns)
    result = rollout(kube_cluster, ns, action="update", targets=["Deployment/auth-service"],
                     images={"auth-service": "registry.lab/auth-service:crashloop"}, wait_timeout="15s")
    assert result.get("failed") and result["rolled_back"] is True, result
    assert "CrashLoopBackOff" in result["msg"] and "rolled back to revision 1" in result["msg"], result["msg"]
    assert result["health"]["status"] == "failed"
    after = kube_admin.get("apps/v1", "deployments", "auth-service", ns)
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.lab/auth-service:1.0"
    assert after["metadata"]["annotations"]["runbook.ops/pre-update-revision"] == "1"
    assert (before["metadata"].get("annotations") or {}).keys() <= after["metadata"]["annotations"].keys()
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "auth-service"), timeout=60, what="rolled back")


def test_update_whose_http_check_has_no_answer_is_inconclusive(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)
    settled(kube_admin, ns)
    result = rollout(kube_cluster, ns, action="update", targets=["Deployment/policy-service"],
                     env={"LOG_LEVEL": "debug"},
                     health={"http": [{"url": "http://127.0.0.1:%d/health" % free_port(), "timeout": "1s"}]})
    assert result.get("failed"), result
    assert result["health"]["status"] == "inconclusive" and result["rolled_back"] is False
    assert "inconclusive" in result["msg"] and "not called a success" in result["msg"]
    sample = result["health"]["samples"][0]
    assert sample["ok"] is None and any(c["check"] == "http" and c["ok"] is None for c in sample["checks"])


def test_statefulset_update_and_rollback_through_controller_revisions(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)
    settled(kube_admin, ns)
    kube_admin.patch("apps/v1", "statefulsets", "redis-master", {"metadata": {"annotations": {"team": "data"}}}, ns)
    updated = rollout(kube_cluster, ns, action="update", targets=["StatefulSet/redis-master"],
                      images={"redis": "registry.lab/redis:2.0"})
    assert not updated.get("failed"), updated
    assert updated["targets"][0]["revision"]["after"] > updated["targets"][0]["revision"]["before"]
    back = rollout(kube_cluster, ns, action="rollback", targets=["StatefulSet/redis-master"])
    assert not back.get("failed"), back
    obj = kube_admin.get("apps/v1", "statefulsets", "redis-master", ns)
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.lab/redis:1.0"
    assert obj["metadata"]["annotations"]["team"] == "data"
    assert obj["status"]["currentRevision"] == obj["status"]["updateRevision"]
    assert back["targets"][0]["action"] == "rolled_back"


def test_rbac_without_patch_on_statefulsets_fails_before_anything_changes(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)
    settled(kube_admin, ns)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "no-sts-patch", "namespace": ns},
            "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "patch"]},
                      {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get", "list", "watch"]},
                      {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["get", "list", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "no-sts-patch", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "no-sts-patch"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": RESTRICTED_USER}]}
    kube_admin.apply(role)
    kube_admin.apply(binding)
    result = run_module("k8s_rollout", dict(kube_cluster.auth(RESTRICTED_TOKEN), namespace=ns, action="stop", steps=STEPS))
    assert result.get("failed"), result
    assert "may not patch statefulsets (for StatefulSet/redis-master)" in result["msg"], result["msg"]
    assert "nothing was changed" in result["msg"]
    for workload in ORDER:  # auth-service comes first in a stop and was patchable: still untouched
        assert spec_replicas(kube_admin, ns, workload["kind"], workload["name"]) == workload["replicas"]


def test_api_server_stopped_mid_sequence_then_a_rerun_completes(own_kube_cluster):
    own_cluster = own_kube_cluster
    admin = own_cluster.client()
    ns = "t-" + uuid.uuid4().hex[:8]
    namespace(admin, ns)
    seed(admin, ns, replicas=0)
    # stopped with records, as a stop would have left them
    for workload in ORDER:
        plural = "deployments" if workload["kind"] == "Deployment" else "statefulsets"
        admin.patch("apps/v1", plural, workload["name"], {"metadata": {"annotations": {"runbook.ops/stopped": json.dumps(
            {"replicas": workload["replicas"], "hpa": None, "services": []})}}}, ns)
    # The auth-service step can never settle in time (its image fails to pull); the API server dies meanwhile.
    admin.patch("apps/v1", "deployments", "auth-service",
                {"spec": {"template": {"metadata": {"annotations": {"runbook.ops/fault": "imagepullbackoff"}}}}}, ns)
    result: t.Dict[str, t.Any] = {}

    def run() -> None:
        result.update(rollout(own_cluster, ns, action="start", steps=STEPS, wait_timeout="60s"))

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(lambda: kwok.rolled_out(admin, "deployments", ns, "policy-service")
             and spec_replicas(admin, ns, "Deployment", "auth-service") == 2, timeout=90, what="step 3 under way")
    own_cluster.apiserver.send_signal(signal.SIGKILL)
    worker.join(120)
    assert result.get("failed"), result
    assert "step 3 (Deployment/auth-service) failed" in result["msg"], result["msg"]
    assert [s["status"] for s in result["steps"]] == ["done", "done", "failed"]
    own_cluster.restart_apiserver()
    admin = own_cluster.client()
    admin.patch("apps/v1", "deployments", "auth-service",
                {"spec": {"template": {"metadata": {"annotations": {"runbook.ops/fault": None}}}}}, ns)
    rerun = rollout(own_cluster, ns, action="start", steps=STEPS, wait_timeout="90s")
    assert not rerun.get("failed"), (rerun.get("msg"), rerun.get("steps"))
    actions = [e["action"] for e in rerun["targets"]]
    assert actions == ["already_started", "already_started", "started"], rerun["targets"]
    obj = admin.get("apps/v1", "deployments", "auth-service", ns)
    assert obj["status"]["readyReplicas"] == 2 and "runbook.ops/stopped" not in obj["metadata"]["annotations"]


def test_cleanup_deletes_finished_pods_and_failed_jobs_only(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    seed(kube_admin, ns)

    def job(name: str, image: str, **spec: t.Any) -> dict:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
                "spec": dict(spec, backoffLimit=0, template={"metadata": {"labels": {"job": name}}, "spec": {
                    "restartPolicy": "Never", "containers": [{"name": name, "image": image}]}})}

    kube_admin.create("batch/v1", "jobs", job("export", "registry.lab/export:1.0"), ns)
    # Its Pod never starts (image pull back-off): the controller fails the Job at its deadline.
    kube_admin.create("batch/v1", "jobs", job("stuck", "registry.lab/stuck:imagepullbackoff", activeDeadlineSeconds=2), ns)
    settled(kube_admin, ns)

    def phases(label: str) -> t.List[str]:
        return [(p.get("status") or {}).get("phase") for p in kube_admin.list("v1", "pods", ns, label_selector=label)]

    wait_for(lambda: phases("job=export") == ["Succeeded"], timeout=60, what="the export Job's Pod Succeeded")
    wait_for(lambda: any(c.get("type") == "Failed" for c in (kube_admin.get("batch/v1", "jobs", "stuck", ns).get(
        "status") or {}).get("conditions") or []), timeout=60, what="the stuck Job Failed")
    running = sorted(p["metadata"]["name"] for p in kube_admin.list("v1", "pods", ns, label_selector="app=auth-service"))

    planned = run_module("k8s_rollout", dict(kube_cluster.auth(), namespace=ns, action="cleanup"), check_mode=True)
    assert not planned.get("failed") and planned["changed"], planned
    assert kube_admin.get("batch/v1", "jobs", "stuck", ns) is not None and phases("job=export") == ["Succeeded"]

    cleaned = rollout(kube_cluster, ns, action="cleanup")
    assert not cleaned.get("failed") and cleaned["changed"], cleaned
    objects = {entry["object"]: entry["reason"] for entry in cleaned["cleaned"]}
    assert objects["Job/%s/stuck" % ns].startswith("failed Job"), objects
    export_pods = [name for name in objects if name.startswith("Pod/%s/export-" % ns)]
    assert len(export_pods) == 1 and len(objects) == 2, objects
    wait_for(lambda: kube_admin.get("batch/v1", "jobs", "stuck", ns, missing_ok=True) is None, timeout=30,
             what="the failed Job deleted")
    wait_for(lambda: phases("job=export") == [], timeout=30, what="the finished Pod deleted")
    assert kube_admin.get("batch/v1", "jobs", "export", ns) is not None  # a succeeded Job stays
    assert sorted(p["metadata"]["name"] for p in kube_admin.list("v1", "pods", ns, label_selector="app=auth-service")) == running

    again = rollout(kube_cluster, ns, action="cleanup")
    assert not again.get("failed") and not again["changed"] and again["cleaned"] == [], again
