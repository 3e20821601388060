"""k8s_health against a real kube-apiserver (etcd, kube-controller-manager, kube-scheduler) whose Pods
KWOK runs; states with a history (back-dated, exact restart counts) come from the stand-in helper."""

from __future__ import annotations

import datetime
import typing as t
import uuid

from tests.harness.collection import run_module
from tests.harness import kwok
from tests.harness.k8s import (
    CERTIFICATE_CRD, RESTRICTED_TOKEN, Kubelet, certificate, create_certificate, deployment, grant_read, service, ts,
    wait_for,
)
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sNotFound
from tests.harness.process import free_port


def health(cluster, ns: t.Optional[str] = None, token: t.Optional[str] = None, check_mode: bool = False,
           **args: t.Any) -> dict:
    params = dict(cluster.auth(token) if token else cluster.auth())
    if ns is not None:
        params["namespaces"] = [ns]
    params.update(args)
    result = run_module("k8s_health", params, check_mode=check_mode)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def by_object(result: dict, obj: str) -> t.List[dict]:
    return [f for f in result["findings"] if f["object"] == obj]


def one(result: dict, obj: str) -> dict:
    found = by_object(result, obj)
    assert len(found) == 1, (obj, result["findings"])
    return found[0]


def one_per_node(body: dict) -> dict:
    """At most one replica per Node: with KWOK's single Node the second replica stays Pending."""
    labels = body["spec"]["template"]["metadata"]["labels"]
    body["spec"]["template"]["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}]}}
    return body


def with_fault(body: dict, fault: str) -> dict:
    body["spec"]["template"]["metadata"]["annotations"] = {kwok.FAULT_ANNOTATION: fault}
    return body


def run_pods(client, ns: str, *pods: dict) -> None:
    """Create Pods for KWOK and wait until it has played each one's first stage."""
    for body in pods:
        client.create("v1", "pods", body, ns)
    for body in pods:
        name = body["metadata"]["name"]
        wait_for(lambda: kwok.played(client, ns, name), what="KWOK to run Pod/%s/%s" % (ns, name))


def later(minutes: float) -> str:
    """A ``now`` that lies ``minutes`` ahead of the objects' timestamps (to pass grace periods)."""
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------
# Workloads


def test_deployment_without_ready_replicas_is_critical_and_partial_is_warning(
        kube_cluster, kube_admin, kubelet, kube_namespace):
    ns = kube_namespace
    # KWOK runs what the scheduler places: an image that never pulls, a second replica with no
    # Node left for it, and a healthy one.
    kube_admin.create("apps/v1", "deployments", with_fault(deployment("none-ready", ns, replicas=2),
                                                           "imagepullbackoff"))
    kube_admin.create("apps/v1", "deployments", one_per_node(deployment("half-ready", ns, replicas=2)))
    kube_admin.create("apps/v1", "deployments", deployment("all-ready", ns, replicas=1))

    def settled() -> bool:
        deps = {d["metadata"]["name"]: d.get("status") or {} for d in kube_admin.list("apps/v1", "deployments", ns)}
        return (deps["half-ready"].get("readyReplicas") == 1 and deps["all-ready"].get("readyReplicas") == 1
                and deps["none-ready"].get("replicas") == 2)
    wait_for(settled, what="deployment status")

    result = health(kube_cluster, ns, checks=["workloads"])
    assert result["changed"] is False and not result.get("failed"), result
    none_ready = one(result, "Deployment/%s/none-ready" % ns)
    assert none_ready["severity"] == "critical"
    assert "0/2 replicas ready" in none_ready["message"]
    half = one(result, "Deployment/%s/half-ready" % ns)
    assert half["severity"] == "warning" and "1/2 replicas ready" in half["message"]
    assert not by_object(result, "Deployment/%s/all-ready" % ns)
    assert result["namespaces"][ns]["workloads"] == {"ready": 1, "total": 3}
    assert result["status"] == "critical"


def test_progress_deadline_exceeded(kube_cluster, kube_admin, kubelet, kube_namespace):
    ns = kube_namespace
    body = one_per_node(deployment("stuck", ns, replicas=2))
    body["spec"]["progressDeadlineSeconds"] = 1
    kube_admin.create("apps/v1", "deployments", body)
    # The ready Pod is progress: let the controller record it before the deadline can stick.
    wait_for(lambda: (kube_admin.get("apps/v1", "deployments", "stuck", ns).get("status") or {})
             .get("readyReplicas") == 1, what="one replica ready")

    def deadline_exceeded() -> bool:
        dep = kube_admin.get("apps/v1", "deployments", "stuck", ns)
        return any(c.get("reason") == "ProgressDeadlineExceeded" for c in (dep.get("status") or {}).get("conditions", []))
    wait_for(deadline_exceeded, timeout=60, what="ProgressDeadlineExceeded")
    stuck = wait_for(lambda: _deadline_finding(kube_cluster, ns), timeout=30, what="deadline reported")
    assert "progress deadline" in stuck["message"]
    assert stuck["details"]["reason"] == "ProgressDeadlineExceeded"
    assert stuck["severity"] in ("warning", "critical")


def _deadline_finding(cluster, ns):
    """The Deployment's finding once it reports the deadline (the controller may still flip the
    condition once more while it catches up)."""
    found = one(health(cluster, ns, checks=["workloads"]), "Deployment/%s/stuck" % ns)
    return found if "progress deadline" in found["message"] else None


def test_statefulset_and_daemonset_not_ready(kube_cluster, kube_admin, kube_namespace, kubelet):
    ns = kube_namespace
    labels = {"app": "db"}
    # KWOK runs both Pods, but their containers never become ready.
    kube_admin.create("apps/v1", "statefulsets", {
        "metadata": {"name": "db", "namespace": ns},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "db", "image": "pg:unready"}]}}}})
    kube_admin.create("apps/v1", "daemonsets", {
        "metadata": {"name": "agent", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "agent", "image": "agent:unready"}]}}}})
    wait_for(lambda: (kube_admin.get("apps/v1", "statefulsets", "db", ns).get("status") or {}).get("observedGeneration")
             and (kube_admin.get("apps/v1", "daemonsets", "agent", ns).get("status") or {}).get("desiredNumberScheduled"),
             what="controllers observed")
    result = health(kube_cluster, ns, checks=["workloads"])
    sts = one(result, "StatefulSet/%s/db" % ns)
    assert sts["severity"] == "critical" and "0/1 replicas ready" in sts["message"]
    ds = one(result, "DaemonSet/%s/agent" % ns)
    assert ds["severity"] == "critical" and ds["details"]["desired"] >= 1


# ----------------------------------------------------------------------------------------------
# Pods


def test_pod_findings(kube_cluster, kube_admin, kubelet: Kubelet, kube_namespace):
    ns = kube_namespace
    # What KWOK plays by its Stage rules ...
    run_pods(kube_admin, ns, kwok.pod("healthy", ns), kwok.pod("imagepull", ns, fault="imagepullbackoff"),
             kwok.pod("oom", ns, fault="oomkilled"))
    # ... and what has a history or a reason of its own, written by the stand-in helper.
    for name in ("crashloop", "errimagepull", "configerror", "pending-long", "pending-new", "notready-long",
                 "notready-new", "restarts"):
        kubelet.create_pod(ns, name)
    kubelet.crash_loop(ns, "crashloop", restarts=5)
    kubelet.set_status(ns, "errimagepull", "Pending", False,
                       waiting=("ErrImagePull", 'failed to pull image "example/missing:0.0"'))
    kubelet.set_status(ns, "configerror", "Pending", False,
                       waiting=("CreateContainerConfigError", 'secret "db-password" not found'))
    kubelet.pending(ns, "pending-long", since=900)
    kubelet.pending(ns, "pending-new", since=10)
    kubelet.not_ready(ns, "notready-long", since=900)
    kubelet.not_ready(ns, "notready-new", since=10)
    kubelet.running(ns, "restarts", restarts=4)

    result = health(kube_cluster, ns, checks=["pods"])
    sev = {f["object"].split("/")[-1]: f for f in result["findings"] if f["check"] == "pods"}
    assert "healthy" not in sev and "pending-new" not in sev and "notready-new" not in sev
    assert sev["crashloop"]["severity"] == "critical"
    assert "CrashLoopBackOff" in sev["crashloop"]["details"]["reasons"]
    assert "Restarts" in sev["crashloop"]["details"]["reasons"]
    assert sev["imagepull"]["severity"] == "critical" and "ImagePullBackOff" in sev["imagepull"]["message"]
    assert sev["errimagepull"]["severity"] == "critical" and "ErrImagePull" in sev["errimagepull"]["message"]
    assert sev["configerror"]["severity"] == "critical" and "db-password" in sev["configerror"]["message"]
    assert sev["oom"]["severity"] == "critical" and "OOMKilled" in sev["oom"]["details"]["reasons"]
    assert sev["pending-long"]["severity"] == "warning" and "Pending for" in sev["pending-long"]["message"]
    assert "Insufficient cpu" in sev["pending-long"]["message"]
    assert sev["notready-long"]["severity"] == "warning" and "not ready for" in sev["notready-long"]["message"]
    assert sev["restarts"]["severity"] == "warning" and sev["restarts"]["details"]["restarts"] == 4
    pods = result["namespaces"][ns]["pods"]
    assert pods["total"] == 11
    assert pods["restarts"] == 5 + 1 + 4
    assert pods["ready"] == 3  # healthy, oom (ready again), restarts

    # The grace periods and the restart threshold are options; `now` moves the clock.
    relaxed = health(kube_cluster, ns, checks=["pods"], restart_warning=10, pod_pending_grace="1h",
                     pod_not_ready_grace="1h")
    names = {f["object"].split("/")[-1] for f in relaxed["findings"] if f["severity"] != "ok"}
    assert names == {"crashloop", "imagepull", "errimagepull", "configerror", "oom"}
    future = health(kube_cluster, ns, checks=["pods"], now=later(30))
    names = {f["object"].split("/")[-1] for f in future["findings"] if f["severity"] == "warning"}
    assert {"pending-new", "notready-new"} <= names


# ----------------------------------------------------------------------------------------------
# Services, PVCs


def test_service_endpoints(kube_cluster, kube_admin, kubelet: Kubelet, kube_namespace):
    ns = kube_namespace
    kube_admin.create("v1", "services", service("empty", ns, {"app": "nothing"}))
    kube_admin.create("v1", "services", service("unready", ns, {"app": "unready"}))
    kube_admin.create("v1", "services", service("manual", ns, {"app": "manual"}))
    kube_admin.create("v1", "services", service("no-selector", ns, None))
    kube_admin.create("v1", "services", service("web", ns, {"app": "web"}))
    kubelet.endpoint_slice(ns, "unready", ready=(False, False))
    kubelet.endpoint_slice(ns, "manual", ready=(False, True))
    run_pods(kube_admin, ns, kwok.pod("web-1", ns, {"app": "web"}))

    def web_has_endpoint() -> bool:
        slices = kube_admin.list("discovery.k8s.io/v1", "endpointslices", ns, label_selector="kubernetes.io/service-name=web")
        return any(e.get("conditions", {}).get("ready") for s in slices for e in s.get("endpoints") or [])
    wait_for(web_has_endpoint, what="the endpoint slice controller to add web-1")

    result = health(kube_cluster, ns, checks=["services"])
    assert one(result, "Service/%s/empty" % ns)["severity"] == "critical"
    unready = one(result, "Service/%s/unready" % ns)
    assert unready["severity"] == "critical" and "2 not ready" in unready["message"]
    for ok in ("manual", "no-selector", "web"):
        assert not by_object(result, "Service/%s/%s" % (ns, ok))
    assert result["namespaces"][ns]["services_without_endpoints"] == ["empty", "unready"]


def test_pvc_pending_and_lost(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    for name in ("waiting", "lost"):
        kube_admin.create("v1", "persistentvolumeclaims", {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                     "resources": {"requests": {"storage": "1Gi"}}}})
    lost = kube_admin.get("v1", "persistentvolumeclaims", "lost", ns)
    lost["status"] = {"phase": "Lost"}
    kube_admin.update_status("v1", "persistentvolumeclaims", lost)
    result = health(kube_cluster, ns, checks=["pvcs"])
    waiting = one(result, "PersistentVolumeClaim/%s/waiting" % ns)
    assert waiting["severity"] == "warning" and "storage class fast" in waiting["message"]
    assert one(result, "PersistentVolumeClaim/%s/lost" % ns)["severity"] == "critical"


# ----------------------------------------------------------------------------------------------
# Events, certificates, jobs, nodes


def test_warning_events_grouped_within_window(kube_cluster, kube_admin, kubelet: Kubelet, kube_namespace):
    ns = kube_namespace
    pod = {"kind": "Pod", "name": "api-1"}
    kubelet.event(ns, pod, "FailedMount", "MountVolume.SetUp failed", count=1, ago=120)
    kubelet.event(ns, pod, "Unhealthy", "Readiness probe failed", count=1, ago=300)
    kubelet.event(ns, pod, "Unhealthy", "Readiness probe failed: 503", count=3, ago=60)
    kubelet.event(ns, {"kind": "Pod", "name": "old"}, "BackOff", "long ago", count=9, ago=3 * 3600)
    kubelet.event(ns, {"kind": "Pod", "name": "normal"}, "Pulled", "image pulled", type_="Normal")
    result = health(kube_cluster, ns, checks=["events"])
    events = {(f["object"], f["details"].get("reason")): f for f in result["findings"] if f["check"] == "events"}
    assert set(events) == {("Pod/%s/api-1" % ns, "FailedMount"), ("Pod/%s/api-1" % ns, "Unhealthy")}
    assert events[("Pod/%s/api-1" % ns, "FailedMount")]["severity"] == "info"
    unhealthy = events[("Pod/%s/api-1" % ns, "Unhealthy")]
    assert unhealthy["severity"] == "warning" and unhealthy["details"]["count"] == 4
    assert "503" in unhealthy["message"]  # the latest message
    wider = health(kube_cluster, ns, checks=["events"], event_window="4h")
    assert any(f["object"] == "Pod/%s/old" % ns for f in wider["findings"])


def test_certificates(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    now = datetime.datetime.now(datetime.timezone.utc)
    create_certificate(kube_admin, certificate("fresh", ns, now + datetime.timedelta(days=80)))
    create_certificate(kube_admin, certificate("soon", ns, now + datetime.timedelta(days=20)))
    create_certificate(kube_admin, certificate("very-soon", ns, now + datetime.timedelta(days=3)))
    create_certificate(kube_admin, certificate("expired", ns, now - datetime.timedelta(days=1), ready=False,
                                               reason="Expired", message="Certificate expired"))
    create_certificate(kube_admin, certificate("failing", ns, now + datetime.timedelta(days=50), ready=False,
                                               reason="DoesNotExist", message="Issuing certificate as Secret does not exist"))
    result = health(kube_cluster, ns, checks=["certificates"], now=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert not by_object(result, "Certificate/%s/fresh" % ns)
    soon = one(result, "Certificate/%s/soon" % ns)
    assert soon["severity"] == "warning" and 19.9 < soon["details"]["days_left"] <= 20
    assert one(result, "Certificate/%s/very-soon" % ns)["severity"] == "critical"
    assert "expired" in one(result, "Certificate/%s/expired" % ns)["message"]
    failing = one(result, "Certificate/%s/failing" % ns)
    assert failing["severity"] == "critical" and "not Ready (DoesNotExist)" in failing["message"]
    strict = health(kube_cluster, ns, checks=["certificates"], cert_warning_days=90, cert_critical_days=25)
    assert one(strict, "Certificate/%s/fresh" % ns)["severity"] == "warning"
    assert one(strict, "Certificate/%s/soon" % ns)["severity"] == "critical"


def _fake_job(kube_admin, ns: str, name: str, failed: bool, started_ago: float, owner: t.Optional[dict] = None) -> None:
    meta: dict = {"name": name, "namespace": ns}
    if owner:
        meta["ownerReferences"] = [owner]
    job = kube_admin.create("batch/v1", "jobs", {"metadata": meta, "spec": {
        # Another controller "manages" the Job, so the Job controller leaves its status to us.
        "managedBy": "runbook.test/fake-job-controller",
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "job"}]}}}})
    start, end = ts(ago=started_ago), ts(ago=started_ago - 30)
    if failed:
        conditions = [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit", "lastTransitionTime": end},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit", "lastTransitionTime": end}]
        job["status"] = {"startTime": start, "failed": 7, "conditions": conditions}
    else:
        conditions = [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": end},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": end}]
        job["status"] = {"startTime": start, "completionTime": end, "succeeded": 1, "conditions": conditions}
    job["status"]["terminating"] = 0
    job["status"]["ready"] = 0
    job["status"]["uncountedTerminatedPods"] = {}
    kube_admin.update_status("batch/v1", "jobs", job)


def test_failed_jobs_and_cronjobs(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    _fake_job(kube_admin, ns, "migrate", failed=True, started_ago=600)
    _fake_job(kube_admin, ns, "seed", failed=False, started_ago=600)
    crons = {}
    for name in ("nightly-failing", "nightly-recovered"):
        crons[name] = kube_admin.create("batch/v1", "cronjobs", {"metadata": {"name": name, "namespace": ns}, "spec": {
            "schedule": "0 3 * * *", "suspend": True,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                                                           "containers": [{"name": "job", "image": "job"}]}}}}}})

    def owner(name: str) -> dict:
        return {"apiVersion": "batch/v1", "kind": "CronJob", "name": name, "uid": crons[name]["metadata"]["uid"],
                "controller": True}
    _fake_job(kube_admin, ns, "nightly-failing-1", failed=False, started_ago=2 * 86400, owner=owner("nightly-failing"))
    _fake_job(kube_admin, ns, "nightly-failing-2", failed=True, started_ago=86400, owner=owner("nightly-failing"))
    _fake_job(kube_admin, ns, "nightly-recovered-1", failed=True, started_ago=2 * 86400, owner=owner("nightly-recovered"))
    _fake_job(kube_admin, ns, "nightly-recovered-2", failed=False, started_ago=86400, owner=owner("nightly-recovered"))
    result = health(kube_cluster, ns, checks=["jobs"])
    jobs = {f["object"]: f for f in result["findings"] if f["check"] == "jobs"}
    assert set(jobs) == {"Job/%s/migrate" % ns, "CronJob/%s/nightly-failing" % ns}, jobs
    assert all(f["severity"] == "warning" for f in jobs.values())
    assert "BackoffLimitExceeded" in jobs["Job/%s/migrate" % ns]["message"]
    assert jobs["CronJob/%s/nightly-failing" % ns]["details"]["job"] == "nightly-failing-2"


def test_nodes(kube_cluster, kube_admin, kubelet: Kubelet):
    suffix = uuid.uuid4().hex[:6]
    down, squeezed = "down-" + suffix, "squeezed-" + suffix
    try:
        kubelet.ensure_node(down, ready=False)
        kubelet.ensure_node(squeezed, ready=True, pressure=("MemoryPressure", "DiskPressure"))
        result = health(kube_cluster, checks=["nodes"])
        assert one(result, "Node/" + down)["severity"] == "critical"
        pressure = one(result, "Node/" + squeezed)
        assert pressure["severity"] == "warning"
        assert "MemoryPressure" in pressure["message"] and "DiskPressure" in pressure["message"]
        assert not by_object(result, "Node/" + kubelet.node)
    finally:
        for name in (down, squeezed):
            kube_admin.delete("v1", "nodes", name, missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Options and result shape


def test_clean_namespace_is_ok_with_bounded_requests(kube_cluster, kube_admin, kubelet, kube_namespace):
    ns = kube_namespace
    run_pods(kube_admin, ns, *[kwok.pod("p%02d" % i, ns) for i in range(30)])
    result = health(kube_cluster, ns, checks=["workloads", "pods", "services", "pvcs", "events", "certificates", "jobs"],
                    now="2030-01-01T00:00:00Z", check_mode=True)
    assert result.get("status") == "ok", result
    assert result["summary"]["ok"] == 7 and sum(result["summary"].values()) == 7
    assert result["checked_at"] == "2030-01-01T00:00:00Z"
    assert result["namespaces"][ns] == {"status": "ok", "workloads": {"ready": 0, "total": 0},
                                        "pods": {"running": 30, "ready": 30, "total": 30, "restarts": 0},
                                        "services_without_endpoints": []}
    # One request for the namespace list, then one list per kind (3 workload kinds, pods, services +
    # endpoint slices, PVCs, events, certificates, jobs), whatever the number of objects.
    assert result["api_requests"] == 1 + 3 + 1 + 2 + 1 + 1 + 1 + 1
    assert isinstance(result["duration_s"], float)
    assert sorted(result["checks_run"]) == sorted(["workloads", "pods", "services", "pvcs", "events", "certificates",
                                                   "jobs"])


def test_label_selector_namespace_selector_and_exclusions(kube_cluster, kube_admin, kubelet, kube_namespace):
    ns = kube_namespace
    kubelet.create_pod(ns, "team-a", {"app": "team-a", "team": "a"})
    kubelet.create_pod(ns, "team-b", {"app": "team-b", "team": "b"})
    kubelet.crash_loop(ns, "team-a")
    kubelet.crash_loop(ns, "team-b")
    selected = health(kube_cluster, ns, checks=["pods"], label_selector="team=a")
    assert [f["object"] for f in selected["findings"] if f["severity"] == "critical"] == ["Pod/%s/team-a" % ns]
    by_label = health(kube_cluster, None, checks=["pods"], namespace_selector="runbook.test/ns=%s" % ns)
    assert list(by_label["namespaces"]) == [ns]
    excluded = health(kube_cluster, None, checks=["pods"], exclude_namespaces=[ns, "kube-system"])
    assert ns not in excluded["namespaces"]
    assert not [f for f in excluded["findings"] if f["details"].get("namespace") == ns]
    missing = health(kube_cluster, "does-not-exist-" + uuid.uuid4().hex[:6], checks=["pods"])
    assert missing["findings"][0]["check"] == "namespaces" and missing["status"] == "warning"


def test_fail_on(kube_cluster, kubelet, kube_namespace):
    ns = kube_namespace
    kubelet.create_pod(ns, "restarts")
    kubelet.running(ns, "restarts", restarts=5)
    kept = health(kube_cluster, ns, checks=["pods"], fail_on="critical")
    assert not kept.get("failed") and kept["status"] == "warning"
    failed = health(kube_cluster, ns, checks=["pods"], fail_on="warning")
    assert failed["failed"] is True
    assert "cluster health is warning (fail_on: warning)" in failed["msg"]
    assert failed["findings"] and failed["namespaces"][ns]["status"] == "warning"
    kubelet.create_pod(ns, "crash")
    kubelet.crash_loop(ns, "crash")
    critical = health(kube_cluster, ns, checks=["pods"], fail_on="critical")
    assert critical["failed"] is True and "1 critical" in critical["msg"]


# ----------------------------------------------------------------------------------------------
# Credentials, connection problems, kubeconfig contexts


def test_restricted_user_gets_unknown_findings_not_a_failure(kube_cluster, kube_admin, kubelet, kube_namespace):
    ns = kube_namespace
    kubelet.create_pod(ns, "crash")
    kubelet.crash_loop(ns, "crash")
    grant_read(kube_admin, ns, {"": ["pods"], "apps": ["deployments"]})
    wait_for(lambda: kube_cluster.client(RESTRICTED_TOKEN).list("v1", "pods", ns), what="the Role to apply")
    result = health(kube_cluster, ns, token=RESTRICTED_TOKEN)
    assert not result.get("failed"), result
    assert one(result, "Pod/%s/crash" % ns)["severity"] == "critical"
    unknown = {f["check"] for f in result["findings"] if f["severity"] == "unknown"}
    assert unknown == {"workloads", "services", "pvcs", "events", "certificates", "jobs", "nodes"}
    sts = one(result, "statefulsets/%s/*" % ns)
    assert "may not list statefulsets in namespace %s" % ns in sts["message"]
    assert sts["details"]["status"] == 403
    assert not [f for f in result["findings"] if f["check"] in ("services", "nodes") and f["severity"] == "ok"]
    assert result["namespaces"][ns]["status"] == "critical"
    assert result["status"] == "critical"

    # Without any namespace given, the restricted user cannot even list namespaces: unknown, no crash.
    everything = health(kube_cluster, token=RESTRICTED_TOKEN, checks=["pods"])
    assert not everything.get("failed") and everything["status"] == "unknown"
    assert everything["findings"][0]["check"] == "namespaces"
    fail = health(kube_cluster, token=RESTRICTED_TOKEN, checks=["pods"], fail_on="warning")
    assert fail["failed"] is True and "unknown" in fail["msg"]


def test_unreachable_api_server_gives_a_clear_message(kube_cluster):
    port = free_port()
    result = run_module("k8s_health", {"host": "https://127.0.0.1:%d" % port, "api_key": "x",
                                       "request_timeout": 2})
    assert result["failed"] is True
    assert "unreachable" in result["msg"] and "connection refused" in result["msg"]
    assert "127.0.0.1:%d" % port in result["msg"]
    assert "Traceback" not in result["msg"] and "exception" not in result


def test_bad_token_and_bad_ca(kube_cluster, tmp_path):
    result = health(kube_cluster, token="not-a-valid-token")
    assert result["failed"] is True and "unauthorized" in result["msg"], result["msg"]
    assert "not-a-valid-token" not in str(result)
    untrusted = run_module("k8s_health", {"host": kube_cluster.server, "api_key": "x"})
    assert untrusted["failed"] is True and "certificate verification failed" in untrusted["msg"], untrusted["msg"]


def test_kubeconfig_with_several_contexts(kube_cluster, kubelet, kube_namespace):
    ns = kube_namespace
    kubelet.create_pod(ns, "crash")
    kubelet.crash_loop(ns, "crash")
    config = str(kube_cluster.contexts_kubeconfig)
    admin = run_module("k8s_health", {"kubeconfig": config, "context": "admin", "namespaces": [ns], "checks": ["pods"]})
    assert not admin.get("failed") and one(admin, "Pod/%s/crash" % ns)["severity"] == "critical"
    # current-context is the restricted user, who may read nothing in this namespace.
    current = run_module("k8s_health", {"kubeconfig": config, "namespaces": [ns], "checks": ["pods"]})
    assert not current.get("failed") and current["status"] == "unknown"
    down = run_module("k8s_health", {"kubeconfig": config, "context": "unreachable", "checks": ["pods"],
                                     "request_timeout": 2})
    assert down["failed"] is True and "unreachable" in down["msg"] and "context unreachable" in down["msg"]
    wrong = run_module("k8s_health", {"kubeconfig": config, "context": "nope"})
    assert wrong["failed"] is True
    assert "context 'nope' not found" in wrong["msg"] and "admin, restricted, unreachable" in wrong["msg"]
    env = run_module("k8s_health", {"namespaces": [ns], "checks": ["pods"]},
                     env={"K8S_AUTH_KUBECONFIG": config, "K8S_AUTH_CONTEXT": "admin"})
    assert not env.get("failed") and one(env, "Pod/%s/crash" % ns)["severity"] == "critical"


def test_playbook_with_module_defaults_group(kube_cluster, kubelet, kube_namespace, tmp_path):
    from tests.harness.collection import run_playbook

    ns = kube_namespace
    kubelet.create_pod(ns, "crash")
    kubelet.crash_loop(ns, "crash")
    playbook = tmp_path / "health.yml"
    playbook.write_text("""
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/runbook.ops.k8s:
      kubeconfig: %s
  tasks:
    - runbook.ops.k8s_health:
        namespaces: [%s]
        checks: [pods]
      register: health
      check_mode: true
    - ansible.builtin.assert:
        that:
          - health.status == 'critical'
          - health is not changed
""" % (kube_cluster.kubeconfig, ns))
    proc = run_playbook(playbook)
    assert proc.returncode == 0, proc.stdout


# Last in this file: it removes the Certificate CRD for a moment and reinstalls it.
def test_certificate_check_does_not_apply_without_the_crd(kube_cluster, kube_admin, kube_namespace):
    crd = CERTIFICATE_CRD["metadata"]["name"]
    try:
        kube_admin.delete("apiextensions.k8s.io/v1", "customresourcedefinitions", crd)
        wait_for(lambda: kube_admin.get("apiextensions.k8s.io/v1", "customresourcedefinitions", crd,
                                        missing_ok=True) is None, timeout=60, what="the CRD to go")
        result = health(kube_cluster, kube_namespace, checks=["certificates", "pods"])
        assert not result.get("failed"), result
        assert result["checks_not_applicable"] == ["certificates"]
        assert not [f for f in result["findings"] if f["check"] == "certificates"]
        assert result["status"] == "ok"
    finally:
        kube_admin.apply(CERTIFICATE_CRD)
        wait_for(lambda: _served(kube_admin, "cert-manager.io/v1", "certificates"), timeout=30, what="the CRD to return")


def _served(client, api_version: str, plural: str) -> bool:
    try:
        client.list(api_version, plural)
    except K8sNotFound:
        return False
    return True
