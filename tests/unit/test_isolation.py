"""Pure logic of ns_isolate: selectors, neutral forms, the deny policy, evidence helpers."""

from __future__ import annotations

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._evidence import log_targets, secret_summary
from ansible_collections.runbook.ops.plugins.module_utils._quarantine import (
    QUARANTINE_LABEL, IsolateOptions, check_incident_id, deny_policy_spec, neutral_pod_selector, nothing_selector,
    parse_workload, policy_allows, same_spec, selector_matches, stripped)
from tests.harness.tasks import InvalidParams, validated


@pytest.mark.parametrize("selector,labels,expected", [
    ({}, {}, True),
    ({}, {"app": "web"}, True),
    (None, {"app": "web"}, False),
    ({"matchLabels": {"app": "web"}}, {"app": "web", "tier": "fe"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}, {"app": "api"}, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}, {}, False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {}, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {"app": "web"}, False),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {"app": "x"}, True),
    ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {"app": "x"}, False),
    ({"matchExpressions": [{"key": "app", "operator": "Bogus"}]}, {"app": "x"}, False),
])
def test_selector_matches(selector, labels, expected):
    assert selector_matches(selector, labels) is expected


@pytest.mark.parametrize("labels", [{}, {"app": "web"}, {"runbook.ops/isolated": "x"}, {QUARANTINE_LABEL: "inc-1"}])
def test_nothing_selector_matches_no_pod(labels):
    assert not selector_matches(nothing_selector(), labels)


def test_neutral_selector_for_namespace_matches_nothing():
    original = {"matchLabels": {"app": "web"}}
    assert neutral_pod_selector(original, None) == nothing_selector()
    assert original == {"matchLabels": {"app": "web"}}  # the original is not modified


def test_neutral_selector_with_one_label_excludes_exactly():
    neutral = neutral_pod_selector({}, {"app": "web"})
    assert not selector_matches(neutral, {"app": "web"})
    assert not selector_matches(neutral, {"app": "web", "pod-template-hash": "abc"})
    assert selector_matches(neutral, {"app": "worker"})
    assert selector_matches(neutral, {})
    narrowed = neutral_pod_selector({"matchLabels": {"tier": "fe"}}, {"app": "web"})
    assert selector_matches(narrowed, {"tier": "fe", "app": "api"})
    assert not selector_matches(narrowed, {"tier": "fe", "app": "web"})
    assert not selector_matches(narrowed, {"app": "api"})


def test_neutral_selector_with_several_labels_uses_the_quarantine_label():
    neutral = neutral_pod_selector({}, {"app": "web", "tier": "fe"})
    assert not selector_matches(neutral, {"app": "web", "tier": "fe", QUARANTINE_LABEL: "inc-1"})
    assert selector_matches(neutral, {"app": "web", "tier": "be"})


def test_deny_policy_without_exceptions_has_no_allow_rule():
    spec = deny_policy_spec(None)
    assert spec == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert not policy_allows({"spec": spec}, {"app": "web"})


def test_deny_policy_exceptions():
    spec = deny_policy_spec({"app": "web"}, allow_dns=True, allow_from_namespaces=["forensics"],
                            allow_cidrs=["10.40.0.0/24"])
    assert spec["podSelector"] == {"matchLabels": {"app": "web"}}
    assert spec["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "forensics"}}}]}]
    dns, cidrs = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert cidrs == {"to": [{"ipBlock": {"cidr": "10.40.0.0/24"}}]}


def test_deny_policy_rejects_a_bad_cidr():
    with pytest.raises(RunbookError, match="'10.0.0.0/33' is not a CIDR"):
        deny_policy_spec(None, allow_cidrs=["10.0.0.0/33"])


def test_same_spec_ignores_empty_lists():
    assert same_spec({"podSelector": {}, "ingress": []}, {"podSelector": {}})
    assert not same_spec({"podSelector": {}}, {"podSelector": {"matchLabels": {"a": "b"}}})


@pytest.mark.parametrize("value", ["inc-1", "a", "2026-0142", "x" * 63])
def test_incident_ids_accepted(value):
    assert check_incident_id(value) == value


@pytest.mark.parametrize("value", ["", None, "INC-1", "inc_1", "-inc", "inc-", "x" * 64, "inc 1", "inc/1", "inc-1\n",
                                   "inc\x00", 7])
def test_incident_ids_refused(value):
    with pytest.raises(RunbookError, match="incident_id"):
        check_incident_id(value)


def test_parse_workload():
    assert parse_workload("Deployment/web") == ("apps/v1", "deployments", "Deployment", "web")
    assert parse_workload("statefulset/db") == ("apps/v1", "statefulsets", "StatefulSet", "db")
    for bad in ("web", "Job/x", "Deployment/", "Deployment/a/b"):
        with pytest.raises(RunbookError, match="scale_to_zero"):
            parse_workload(bad)


def test_stripped_drops_status_and_server_fields():
    obj = {"metadata": {"name": "p", "resourceVersion": "5", "managedFields": [], "uid": "u", "labels": {"a": "b"}},
           "spec": {"x": 1}, "status": {"y": 2}}
    assert stripped(obj) == {"metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"x": 1}}
    assert obj["status"] == {"y": 2}


def test_secret_summary_keeps_no_value():
    secret = {"metadata": {"name": "db", "namespace": "auth", "annotations": {
        "kubectl.kubernetes.io/last-applied-configuration": '{"stringData":{"password":"hunter2"}}'}},
        "type": "Opaque", "data": {"password": "aHVudGVyMg=="}, "stringData": {"extra": "hunter2"}}
    summary = secret_summary(secret)
    assert summary["keys"] == ["extra", "password"]
    assert summary["annotation_names"] == ["kubectl.kubernetes.io/last-applied-configuration"]
    assert "hunter2" not in repr(summary) and "aHVudGVyMg" not in repr(summary)


def test_log_targets_ask_for_previous_logs_only_after_a_restart():
    pod = {"spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "app"}, {"name": "sidecar"}]},
           "status": {"containerStatuses": [
               {"name": "app", "restartCount": 3, "lastState": {"terminated": {"exitCode": 1}}},
               {"name": "sidecar", "restartCount": 0, "lastState": {}}]}}
    assert log_targets(pod) == [("init", False), ("app", False), ("app", True), ("sidecar", False)]


def options(**overrides) -> IsolateOptions:
    """The options of an ns_isolate task with these parameters, defaults applied by the argument spec."""
    params = {"namespace": "auth", "incident_id": "inc-1", "pod_selector": {"app": "web"}}
    params.update(overrides)
    return IsolateOptions.from_params(validated("ns_isolate", params))


def test_options_hold_the_selector_as_label_text_and_the_evidence_defaults():
    opts = options()
    assert opts.pod_selector == {"app": "web"} and opts.state == "isolated" and opts.label_pods is True
    assert opts.evidence.capture is True and opts.evidence.log_limit_bytes == 16777216
    assert opts.evidence.compression == "zstd" and opts.evidence.since is None
    assert opts.evidence.storage["repository"] == "file:///var/backups/runbook"
    assert options(pod_selector={"version": 2, "example.com/tier": "front-end"}).pod_selector == {
        "version": "2", "example.com/tier": "front-end"}
    assert options(pod_selector=None).pod_selector is None
    assert options(state="released", incident_id=None, pod_selector=None).incident_id is None
    assert options(evidence={"since": "2h", "log_tail_lines": 50}).evidence.since == 7200


def test_options_recorded_in_the_record():
    assert options(allow_dns=True, scale_to_zero=["Deployment/web"]).options_recorded == {
        "allow_dns": True, "allow_from_namespaces": [], "allow_cidrs": [], "suspend_services": False,
        "scale_to_zero": ["Deployment/web"], "label_pods": True}


def test_evidence_is_not_checked_when_nothing_is_captured():
    assert options(state="released", evidence={"set": "../x"}).evidence.set == "../x"
    assert options(evidence={"capture": False, "since": "whenever"}).evidence.since is None


@pytest.mark.parametrize("params, words", [
    ({"state": "isolated"}, "incident_id"),                      # required with state=isolated
    ({"state": "quarantined"}, "state"),
    ({"evidence": {"compression": "lz4"}}, "compression"),
    ({"evidence": {"access_key": "AKIA"}}, "secret_key"),        # keys come together
])
def test_the_argument_spec_refuses(params, words):
    base = {"namespace": "auth"} if "state" in params else {"namespace": "auth", "incident_id": "inc-1"}
    with pytest.raises(InvalidParams, match=words):
        validated("ns_isolate", dict(base, **params))


@pytest.mark.parametrize("overrides, words", [
    ({"namespace": "../kube-system"}, "namespace"),
    ({"incident_id": "INC_1"}, "incident_id"),
    ({"incident_id": None}, "incident_id None is not valid"),  # given as null: the argument spec lets it through
    ({"pod_selector": {"app": "web,tier=db"}}, "pod_selector[app]"),
    ({"pod_selector": {"app": None}}, "pod_selector[app] must be a label value"),
    ({"pod_selector": {"a b": "x"}}, "not a valid label key"),
    ({"allow_from_namespaces": ["Forensics"]}, "allow_from_namespaces[0]"),
    ({"allow_cidrs": ["10.0.0.0/33"]}, "allow_cidrs[0]"),
    ({"scale_to_zero": ["Deployment/../x"]}, "scale_to_zero entry"),
    ({"evidence": {"set": "../x"}}, "evidence.set"),
    ({"evidence": {"log_tail_lines": 0}}, "evidence.log_tail_lines"),
    ({"evidence": {"log_limit_bytes": -1}}, "evidence.log_limit_bytes"),
    ({"evidence": {"since": "0"}}, "evidence.since"),
    ({"evidence": {"repository": "ftp://host/x"}}, "repository"),
    ({"evidence": {"encryption_recipients": ["with\x00nul"]}}, "encryption_recipients[0]"),
])
def test_options_refuse(overrides, words):
    with pytest.raises(RunbookError) as caught:
        options(**overrides)
    assert words in caught.value.msg
