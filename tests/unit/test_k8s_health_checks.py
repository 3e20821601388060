"""The pure evaluation functions behind k8s_health (objects in, findings out)."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._k8s_health import (
    HealthOptions, Thresholds, check_certificate, check_events, check_jobs, check_node, check_pod, check_pvc,
    check_service, check_workload,
)
from tests.harness.tasks import InvalidParams, validated

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def thresholds(**params) -> Thresholds:
    """Thresholds as a k8s_health task with ``params`` gets them (the argument spec's defaults)."""
    return Thresholds.from_params(validated("k8s_health", params))


TH = thresholds()


def ago(seconds: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def days(n: float) -> str:
    return (NOW + datetime.timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%SZ")


def dep(replicas=3, ready=3, generation=2, observed=2, conditions=(), kind="Deployment"):
    return {"kind": kind, "metadata": {"name": "api", "namespace": "auth", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"readyReplicas": ready, "observedGeneration": observed, "conditions": list(conditions)}}


def test_workload_ready_and_scaled_to_zero_are_fine():
    assert check_workload(dep()) is None
    assert check_workload(dep(replicas=0, ready=0)) is None


def test_workload_severity_depends_on_whether_any_replica_is_ready():
    none = check_workload(dep(ready=0))
    assert none["severity"] == "critical" and none["object"] == "Deployment/auth/api"
    assert "0/3 replicas ready" in none["message"]
    some = check_workload(dep(ready=1))
    assert some["severity"] == "warning" and some["details"] == {
        "desired": 3, "ready": 1, "generation": 2, "observed_generation": 2, "namespace": "auth"}


def test_workload_not_observed_and_progress_deadline():
    assert "not observed" in check_workload(dep(generation=3, observed=2))["message"]
    stuck = check_workload(dep(ready=2, conditions=[{"type": "Progressing", "status": "False",
                                                     "reason": "ProgressDeadlineExceeded", "message": "too slow"}]))
    assert stuck["severity"] == "warning" and "progress deadline" in stuck["message"]
    assert stuck["details"]["reason"] == "ProgressDeadlineExceeded"


def test_daemonset_uses_scheduled_counts():
    ds = {"kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "ops", "generation": 1},
          "status": {"desiredNumberScheduled": 3, "numberReady": 2, "observedGeneration": 1}}
    assert check_workload(ds)["severity"] == "warning"
    ds["status"]["numberReady"] = 3
    assert check_workload(ds) is None


def pod(phase="Running", ready=True, waiting=None, restarts=0, last=None, start=ago(3600), ready_since=ago(3600),
        created=ago(3600), scheduled=True, owners=()):
    cstat = {"name": "app", "restartCount": restarts, "state": {"waiting": {"reason": waiting}} if waiting else {}}
    if last:
        cstat["lastState"] = {"terminated": {"reason": last}}
    conditions = [{"type": "PodScheduled", "status": "True" if scheduled else "False",
                   "message": "0/3 nodes are available" if not scheduled else ""},
                  {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": ready_since}]
    return {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "creationTimestamp": created,
                                        "ownerReferences": list(owners)},
            "spec": {"nodeName": "n1"},
            "status": {"phase": phase, "startTime": start, "conditions": conditions, "containerStatuses": [cstat]}}


@pytest.mark.parametrize("reason", ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"])
def test_pod_waiting_reasons_are_critical(reason):
    found = check_pod(pod(ready=False, waiting=reason), NOW, TH)
    assert found["severity"] == "critical" and reason in found["details"]["reasons"]


def test_pod_oomkilled_restarts_and_healthy():
    assert check_pod(pod(), NOW, TH) is None
    assert check_pod(pod(last="OOMKilled", restarts=1), NOW, TH)["details"]["reasons"] == ["OOMKilled"]
    assert check_pod(pod(restarts=2), NOW, TH) is None
    restarts = check_pod(pod(restarts=3), NOW, TH)
    assert restarts["severity"] == "warning" and restarts["details"]["restarts"] == 3
    assert check_pod(pod(phase="Succeeded", ready=False), NOW, TH) is None


def test_pod_pending_and_not_ready_respect_grace():
    assert check_pod(pod(phase="Pending", ready=False, start=ago(60), scheduled=False), NOW, TH) is None
    pending = check_pod(pod(phase="Pending", ready=False, start=ago(600), scheduled=False), NOW, TH)
    assert pending["severity"] == "warning" and "Pending for 10m: 0/3 nodes" in pending["message"]
    assert check_pod(pod(ready=False, ready_since=ago(120)), NOW, TH) is None
    assert "not ready for 20m" in check_pod(pod(ready=False, ready_since=ago(1200)), NOW, TH)["message"]
    lenient = thresholds(pod_not_ready_grace="1h")
    assert check_pod(pod(ready=False, ready_since=ago(1200)), NOW, lenient) is None


def test_failed_pod_of_a_job_is_left_to_the_jobs_check():
    assert check_pod(pod(phase="Failed", ready=False), NOW, TH)["severity"] == "warning"
    assert check_pod(pod(phase="Failed", ready=False, owners=[{"kind": "Job", "name": "j"}]), NOW, TH) is None


def test_service_endpoints():
    svc = {"kind": "Service", "metadata": {"name": "web", "namespace": "ns"}, "spec": {"selector": {"app": "web"}}}
    ready = {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}]}
    unready = {"endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": False}}]}
    unset = {"endpoints": [{"addresses": ["10.0.0.3"], "conditions": {}}]}
    assert check_service(svc, [ready]) is None
    assert check_service(svc, [unset]) is None  # a missing ready condition means ready
    assert check_service(svc, [unready])["severity"] == "critical"
    assert "no ready endpoints (0 not ready)" in check_service(svc, [])["message"]
    assert check_service({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName"}}, []) is None
    assert check_service({"metadata": {"name": "manual"}, "spec": {}}, []) is None


def test_pvc_phases():
    def pvc(phase, klass=None):
        spec = {} if klass is None else {"storageClassName": klass}
        return {"metadata": {"name": "data", "namespace": "ns"}, "spec": spec, "status": {"phase": phase}}
    assert check_pvc(pvc("Bound")) is None
    assert check_pvc(pvc("Pending"))["severity"] == "warning"
    assert "the default storage class" in check_pvc(pvc("Pending"))["message"]
    assert "no storage class" in check_pvc(pvc("Pending", ""))["message"]
    assert check_pvc(pvc("Lost"))["severity"] == "critical"


def event(name, reason, count=1, at=ago(60), type_="Warning", message="m"):
    return {"metadata": {"namespace": "ns"}, "involvedObject": {"kind": "Pod", "name": name, "namespace": "ns"},
            "reason": reason, "count": count, "lastTimestamp": at, "type": type_, "message": message}


def test_events_are_grouped_by_object_and_reason_within_the_window():
    found = check_events([
        event("a", "BackOff", 1, ago(100), message="old"), event("a", "BackOff", 1, ago(50), message="new"),
        event("a", "FailedMount"), event("b", "BackOff", 1, ago(7200)), event("c", "Pulled", 5, type_="Normal"),
    ], NOW, TH)
    by_key = {(f["object"], f["details"]["reason"]): f for f in found}
    assert set(by_key) == {("Pod/ns/a", "BackOff"), ("Pod/ns/a", "FailedMount")}
    backoff = by_key[("Pod/ns/a", "BackOff")]
    assert backoff["severity"] == "warning" and backoff["details"]["count"] == 2 and backoff["message"].endswith("new")
    assert by_key[("Pod/ns/a", "FailedMount")]["severity"] == "info"


def test_events_series_count_and_event_time():
    ev = {"metadata": {"namespace": "ns"}, "regarding": {"kind": "Node", "name": "n1"}, "reason": "Rebooted",
          "type": "Warning", "eventTime": ago(30), "series": {"count": 4, "lastObservedTime": ago(10)}}
    (found,) = check_events([ev], NOW, TH)
    assert found["details"]["count"] == 4 and found["severity"] == "warning"


def cert(not_after_days, ready="True", reason="Ready"):
    return {"kind": "Certificate", "metadata": {"name": "tls", "namespace": "ns"}, "spec": {"secretName": "tls"},
            "status": {"notAfter": days(not_after_days),
                       "conditions": [{"type": "Ready", "status": ready, "reason": reason}]}}


def test_certificate_thresholds():
    assert check_certificate(cert(60), NOW, TH) is None
    assert check_certificate(cert(20), NOW, TH)["severity"] == "warning"
    assert check_certificate(cert(5), NOW, TH)["severity"] == "critical"
    assert "expired" in check_certificate(cert(-1), NOW, TH)["message"]
    failing = check_certificate(cert(60, "False", "Failed"), NOW, TH)
    assert failing["severity"] == "critical" and failing["details"]["reason"] == "Failed"
    no_status = {"metadata": {"name": "new", "namespace": "ns"}}
    assert "no Ready condition" in check_certificate(no_status, NOW, TH)["message"]


def job(name, failed, start, cron=None):
    meta = {"name": name, "namespace": "ns"}
    if cron:
        meta["ownerReferences"] = [{"kind": "CronJob", "name": cron}]
    cond = {"type": "Failed" if failed else "Complete", "status": "True", "reason": "BackoffLimitExceeded" if failed else ""}
    return {"metadata": meta, "status": {"startTime": start, "conditions": [cond]}}


def test_jobs_and_cronjobs_last_run():
    found = check_jobs([
        job("one-off", True, ago(100)), job("ok", False, ago(100)),
        job("nightly-1", False, ago(2 * 86400), "nightly"), job("nightly-2", True, ago(86400), "nightly"),
        job("hourly-1", True, ago(7200), "hourly"), job("hourly-2", False, ago(3600), "hourly"),
        {"metadata": {"name": "hourly-3", "namespace": "ns", "ownerReferences": [{"kind": "CronJob", "name": "hourly"}]},
         "status": {"startTime": ago(60), "active": 1}},
    ])
    assert {f["object"] for f in found} == {"Job/ns/one-off", "CronJob/ns/nightly"}
    assert all(f["severity"] == "warning" for f in found)


def test_nodes():
    def node(ready="True", **conds):
        conditions = [{"type": "Ready", "status": ready, "reason": "KubeletReady"}]
        conditions += [{"type": k, "status": v} for k, v in conds.items()]
        return {"kind": "Node", "metadata": {"name": "n1"}, "status": {"conditions": conditions}}
    assert check_node(node()) is None
    assert check_node(node("False"))["severity"] == "critical"
    assert check_node(node("Unknown"))["severity"] == "critical"
    assert check_node(node(MemoryPressure="True", DiskPressure="False"))["severity"] == "warning"
    cordoned = node()
    cordoned["spec"] = {"unschedulable": True}
    assert check_node(cordoned)["severity"] == "info"


def test_thresholds_from_params_validate():
    th = thresholds(pod_pending_grace="90s", event_window="2h", cert_warning_days=10, cert_critical_days=3,
                    restart_warning=5)
    assert (th.pod_pending_grace, th.event_window, th.restart_warning) == (90, 7200, 5)
    assert (TH.restart_warning, TH.pod_pending_grace, TH.pod_not_ready_grace, TH.event_window) == (3, 300, 300, 3600)
    assert (TH.cert_warning_days, TH.cert_critical_days) == (30, 7)
    with pytest.raises(RunbookError, match="must not exceed"):
        thresholds(cert_warning_days=5, cert_critical_days=10)
    with pytest.raises(RunbookError, match="not a duration"):
        thresholds(event_window="soon")
    with pytest.raises(RunbookError, match="restart_warning must be at least 1"):
        thresholds(restart_warning=0)


def test_health_options_from_the_argument_spec():
    opts = HealthOptions.from_params(validated("k8s_health", {"checks": ["pods", "nodes", "pods"],
                                                              "now": "2026-03-01T06:00:00Z"}))
    assert opts.checks == ["pods", "nodes"]
    assert opts.exclude_namespaces == ["kube-system", "kube-public", "kube-node-lease"]
    assert opts.fail_on == "never" and opts.namespaces is None
    assert opts.now == datetime.datetime(2026, 3, 1, 6, 0, tzinfo=datetime.timezone.utc)
    assert opts.thresholds == TH
    with pytest.raises(RunbookError, match=r"namespaces\[1\] '../x' is not a valid Kubernetes name"):
        HealthOptions.from_params(validated("k8s_health", {"namespaces": ["ok", "../x"]}))


@pytest.mark.parametrize("params, words", [
    ({"checks": ["no-such-check"]}, "checks"),
    ({"namespaces": ["a"], "namespace_selector": "team=a"}, "mutually exclusive"),
    ({"fail_on": "sometimes"}, "fail_on"),
])
def test_the_argument_spec_refuses(params, words):
    with pytest.raises(InvalidParams, match=words):
        validated("k8s_health", params)


def test_expected_objects_resolve_their_group_version():
    from ansible_collections.runbook.ops.plugins.module_utils._k8s_health import ExpectedObject

    svc = ExpectedObject.from_entry(0, {"kind": "Service", "name": "redis", "namespace": "rust-security"})
    assert (svc.api_version, svc.ref) == ("v1", "Service/rust-security/redis")
    custom = ExpectedObject.from_entry(1, {"kind": "PrometheusRule", "name": "r", "namespace": "mon",
                                           "api_version": "monitoring.coreos.com/v1"})
    assert custom.api_version == "monitoring.coreos.com/v1"
    with pytest.raises(RunbookError, match=r"expected_objects\[2\]: kind PrometheusRule needs api_version"):
        ExpectedObject.from_entry(2, {"kind": "PrometheusRule", "name": "r", "namespace": "mon"})
    with pytest.raises(RunbookError):
        ExpectedObject.from_entry(3, {"kind": "Service", "name": "r", "namespace": "Not_A_Namespace"})
