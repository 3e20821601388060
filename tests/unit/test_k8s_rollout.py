"""Pure parts of k8s_rollout and k8s_node: option parsing through the argument spec, target words,
template patches, the settled judgement, the health gate's verdicts, which Pods a drain skips."""

from __future__ import annotations

import pytest

from tests.harness.collection import ensure_collection_path
from tests.harness.tasks import InvalidParams, validated

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError  # noqa: E402
from ansible_collections.runbook.ops.plugins.module_utils._k8s_node import skip_reason  # noqa: E402
from ansible_collections.runbook.ops.plugins.module_utils._k8s_rollout import (  # noqa: E402
    RolloutOptions, TargetRef, Workload, cleanup_plan, parse_target, template_patch,
)
from ansible_collections.runbook.ops.plugins.module_utils._rollout import settled  # noqa: E402
from ansible_collections.runbook.ops.plugins.module_utils._rollout_gate import GateOptions, HealthReport  # noqa: E402

BASE = {"host": "https://127.0.0.1:6443", "namespace": "rust-security"}


def options(**params):
    return RolloutOptions.from_params(validated("k8s_rollout", dict(BASE, **params)))


def test_targets_accept_kubectl_words_and_refuse_others():
    assert parse_target("sts/redis-master") == TargetRef("StatefulSet", "redis-master")
    assert parse_target("deployment/auth-service") == TargetRef("Deployment", "auth-service")
    with pytest.raises(RunbookError, match="must be Kind/name"):
        parse_target("Pod/auth-service-0")
    with pytest.raises(RunbookError, match="must be Kind/name"):
        parse_target("auth-service")


def test_argument_spec_rules():
    with pytest.raises(InvalidParams, match="replicas"):
        validated("k8s_rollout", dict(BASE, action="scale", all=True))
    with pytest.raises(InvalidParams, match="images, env, resources, patch"):
        validated("k8s_rollout", dict(BASE, action="update", targets=["Deployment/a"]))
    with pytest.raises(InvalidParams, match="mutually exclusive"):
        validated("k8s_rollout", dict(BASE, action="status", all=True, targets=["Deployment/a"]))
    with pytest.raises(InvalidParams, match="any of the following are missing: targets, label_selector, all, steps"):
        validated("k8s_rollout", dict(BASE, action="status"))
    assert validated("k8s_rollout", dict(BASE, action="cleanup"))["action"] == "cleanup"
    with pytest.raises(RunbookError, match="targets, all and steps do not apply"):
        options(action="cleanup", all=True)
    with pytest.raises(InvalidParams, match="value of action must be one of"):
        validated("k8s_rollout", dict(BASE, action="undo", all=True))


def test_options_parse_steps_durations_and_gate_defaults():
    opts = options(action="start", steps=[{"targets": ["sts/redis"]}, {"targets": ["Deployment/auth"], "wait_timeout": "2m"}])
    assert [s.wait_timeout for s in opts.steps] == [300.0, 120.0]
    assert opts.steps[0].targets == [TargetRef("StatefulSet", "redis")]
    assert opts.health.samples == 1 and opts.health.interval == 5.0 and not opts.health.requested
    gated = options(action="restart", all=True, health={"http": [{"url": "http://auth.rust-security.svc:8080/health"}]})
    assert gated.health.requested and gated.health.http[0].status == 200
    with pytest.raises(RunbookError, match="http:// or https://"):
        options(action="restart", all=True, health={"http": [{"url": "ftp://x/"}]})


def workload(containers=("app", "sidecar")):
    return Workload("Deployment", {"metadata": {"name": "auth", "namespace": "ns", "generation": 1, "resourceVersion": "1"},
                                   "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": c} for c in containers]}}}})


def test_template_patch_per_container_and_unknown_container():
    opts = options(action="update", all=True, images={"app": "img:2"}, env={"LOG": "debug"},
                   patch={"metadata": {"labels": {"v": "2"}}})
    patch = template_patch(opts, workload())
    assert patch["metadata"] == {"labels": {"v": "2"}}
    by_name = {c["name"]: c for c in patch["spec"]["containers"]}
    assert by_name["app"]["image"] == "img:2" and by_name["app"]["env"] == [{"name": "LOG", "value": "debug"}]
    assert "image" not in by_name["sidecar"] and by_name["sidecar"]["env"][0]["name"] == "LOG"
    with pytest.raises(RunbookError, match="names container 'nope'; Deployment/ns/auth has app, sidecar"):
        template_patch(options(action="update", all=True, images={"nope": "x"}), workload())


def deployment_status(**status):
    return {"metadata": {"generation": 2, "namespace": "ns", "name": "a"}, "spec": {"replicas": 3},
            "status": dict({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3,
                            "availableReplicas": 3}, **status)}


def test_settled_needs_every_replica_accounted_for():
    assert settled("Deployment", deployment_status(), 2) == (True, "")
    assert settled("Deployment", deployment_status(readyReplicas=2, availableReplicas=2), 2)[0] is False
    assert settled("Deployment", deployment_status(unavailableReplicas=1), 2)[0] is False
    stopped = {"metadata": {"generation": 2}, "spec": {"replicas": 0},
               "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 0, "currentRevision": "r", "updateRevision": "r"}}
    assert settled("StatefulSet", stopped, 2) == (False, "1 replicas exist, 0 desired")


def test_gate_no_data_is_inconclusive_and_failures_count_to_the_limit():
    gate = GateOptions(samples=3, interval=0.0, failure_limit=2, http=[], k8s_health=False)
    report = HealthReport(gate)
    report.add({"ok": True, "checks": []})
    report.add({"ok": None, "checks": [{"check": "http", "target": "u", "ok": None, "detail": "no answer"}]})
    assert report.status == "inconclusive" and report.over
    failing = HealthReport(gate)
    failing.add({"ok": False, "checks": [{"check": "readiness", "target": "x", "ok": False, "detail": "d"}]})
    assert failing.status == "passed" and not failing.over
    failing.add({"ok": False, "checks": [{"check": "readiness", "target": "x", "ok": False, "detail": "d"}]})
    assert failing.status == "failed" and "2 failed" in failing.summary()


def pod(**meta):
    return {"metadata": dict({"name": "p", "namespace": "ns"}, **meta), "spec": {}, "status": {"phase": "Running"}}


def test_drain_skips_daemonset_and_mirror_pods_and_refuses_unmanaged_ones():
    assert skip_reason(pod(ownerReferences=[{"kind": "DaemonSet", "controller": True}]), False) == "DaemonSet Pod"
    assert "mirror" in skip_reason(pod(annotations={"kubernetes.io/config.mirror": "x"}), False)
    assert skip_reason(pod(ownerReferences=[{"kind": "ReplicaSet", "controller": True}]), False) is None
    assert skip_reason(pod(), False).startswith("!Pod/ns/p has no controller")
    with_scratch = pod(ownerReferences=[{"kind": "ReplicaSet", "controller": True}])
    with_scratch["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    assert "delete_emptydir_data" in skip_reason(with_scratch, False)
    assert skip_reason(with_scratch, True) is None


def _pod(name, phase, job=None, deleting=False):
    meta = {"name": name, "resourceVersion": "1"}
    if job:
        meta["ownerReferences"] = [{"kind": "Job", "name": job}]
    if deleting:
        meta["deletionTimestamp"] = "2026-03-01T02:00:00Z"
    return {"metadata": meta, "status": {"phase": phase}}


def _job(name, failed, reason="BackoffLimitExceeded"):
    conditions = [{"type": "Failed", "status": "True", "reason": reason}] if failed else [{"type": "Complete", "status": "True"}]
    return {"metadata": {"name": name, "resourceVersion": "1"}, "status": {"conditions": conditions}}


def test_cleanup_plan_finished_pods_and_failed_jobs_only():
    pods = [_pod("web-1", "Running"), _pod("export-1", "Succeeded", job="export"), _pod("broken-1", "Failed", job="broken"),
            _pod("oneoff", "Failed"), _pod("gone", "Succeeded", deleting=True), _pod("pending", "Pending")]
    jobs = [_job("export", failed=False), _job("broken", failed=True)]
    plan = [(plural, obj["metadata"]["name"], reason) for plural, obj, reason in cleanup_plan(pods, jobs)]
    # The failed Job's Pod goes with it; running, pending and terminating Pods and succeeded Jobs stay.
    assert plan == [("jobs", "broken", "failed Job (BackoffLimitExceeded)"),
                    ("pods", "export-1", "finished Pod (phase Succeeded)"),
                    ("pods", "oneoff", "finished Pod (phase Failed)")]
