"""The incident response's plan and report-section filters: pure functions over a platform description."""

from __future__ import annotations

import pytest

from tests.harness.collection import ensure_collection_path

ensure_collection_path()

from ansible.errors import AnsibleFilterError  # noqa: E402

from ansible_collections.runbook.ops.plugins.filter.incident_response import (  # noqa: E402
    incident_response_plan, incident_response_sections)
from ansible_collections.runbook.ops.plugins.filter.platform_description import platform_description  # noqa: E402

PASSWORD = "pl4tform-db-password"


def described() -> dict:
    return platform_description({
        "name": "auth", "kubernetes": {"kubeconfig": "/k"}, "namespaces": ["auth", "edge"],
        "workloads": [{"kind": "StatefulSet", "name": "postgres", "data_store": True},
                      {"name": "auth-service"}, {"name": "gateway", "namespace": "edge"}],
        "databases": [{"name": "auth_db", "connection": {"login_host": "db", "login_password": PASSWORD}}],
        "credentials": [{"service": "postgresql", "target": "auth_db",
                         "options": {"role": "app", "secret": {"namespace": "auth", "name": "app-db"}}}],
        "signing_keys": [{"secret_name": "jwt", "options": {"algorithm": "ES256"}}],
        "repository": {"repository": "file:///r", "encryption_recipients": ["age1x"], "keep_last": 3,
                       "compression_threads": 2},
    })


@pytest.mark.parametrize("scenario,steps", [
    ("breach", {"evidence", "isolate"}), ("unauthorized_access", {"evidence", "isolate", "credentials"}),
    ("jwt_compromise", {"evidence", "signing_keys"}), ("credential_compromise", {"evidence", "credentials"}),
    ("brute_force", {"evidence", "block"}), ("release", set())])
def test_each_scenario_takes_its_steps(scenario, steps):
    plan = incident_response_plan(described(), scenario, "inc-1")
    assert {step for step, taken in plan["steps"].items() if taken} == steps


def test_items_hold_no_secret_and_args_are_by_key():
    plan = incident_response_plan(described(), "unauthorized_access", "inc-1", {"pod_selector": {"app": "api"}})
    items = [i for step in ("evidence", "isolate", "release", "credentials", "signing_keys", "block", "unblock")
             for i in plan[step]]
    assert PASSWORD not in repr(items)
    assert [i["namespace"] for i in plan["evidence"]] == ["auth", "edge"]
    evidence = plan["args"]["evidence Namespace/auth"]
    # Only the repository options k8s_evidence takes; the backup-only ones stay out.
    assert evidence["repository"] == "file:///r" and "keep_last" not in evidence and "compression_threads" not in evidence
    assert evidence["pod_selector"] == {"app": "api"} and evidence["incident_id"] == "inc-1"
    assert plan["args"]["isolate Namespace/edge"]["evidence"] == {"capture": False}
    rotate = plan["args"][plan["credentials"][0]["key"]]
    assert rotate["force"] is True and "rotate_after" not in rotate and rotate["login_password"] == PASSWORD


def test_signing_keys_are_revoked_and_their_consumers_restarted():
    plan = incident_response_plan(described(), "jwt_compromise", "inc-1")
    args = plan["args"][plan["signing_keys"][0]["key"]]
    assert args["revoke"] == ["all"] and args["force"] is True and args["namespace"] == "auth"
    # The key's namespace's workloads, data stores left alone.
    assert args["restart"] == [{"kind": "Deployment", "name": "auth-service", "namespace": "auth"}]
    given = [{"kind": "Deployment", "name": "gateway", "namespace": "edge"}]
    plan = incident_response_plan(described(), "jwt_compromise", "inc-1", {"jwt_consumers": given})
    assert plan["args"][plan["signing_keys"][0]["key"]]["restart"] == given


def test_brute_force_block_and_its_release():
    plan = incident_response_plan(described(), "brute_force", "inc-1", {"brute_force": {
        "namespace": "edge", "log_sources": [{"label_selector": "app=gateway"}], "pattern": "auth_failed",
        "options": {"top": 3}}})
    block = plan["args"]["block Namespace/edge"]
    assert block["state"] == "blocked" and block["top"] == 3 and block["pattern"] == "auth_failed"
    assert block["log_sources"] == [{"label_selector": "app=gateway"}]
    assert plan["args"]["unblock Namespace/edge"]["state"] == "released"


def test_bad_input_fails_clearly():
    with pytest.raises(AnsibleFilterError, match="scenario 'outage'"):
        incident_response_plan(described(), "outage", "inc-1")
    with pytest.raises(AnsibleFilterError, match="runbook_platform"):
        incident_response_plan({"name": "x"}, "breach", "inc-1")


def test_sections_keep_only_what_a_report_reads():
    result = {"changed": True, "msg": "done", "invocation": {"module_args": {"login_password": PASSWORD}},
              "results": [{"msg": "one", "item": {"args": PASSWORD}, "findings": []}]}
    sections = incident_response_sections([{"name": "Evidence", "source": "evidence", "result": result},
                                           {"name": "Block", "source": "block", "result": None}])
    assert PASSWORD not in repr(sections)
    assert sections[0]["result"]["results"] == [{"msg": "one", "findings": []}]
    assert sections[1]["result"] == {"skipped": True, "skip_reason": "not run"}
