"""The maintenance window's guard, plan and report filters: pure functions, an injected clock."""

from __future__ import annotations

import datetime

import pytest

from tests.harness.collection import ensure_collection_path

ensure_collection_path()

from ansible.errors import AnsibleFilterError  # noqa: E402

from ansible_collections.runbook.ops.plugins.filter.maintenance_window import (  # noqa: E402
    maintenance_window, maintenance_window_report, new_findings, window_clock, window_plan, window_state,
)

MONTHLY = {"name": "monthly", "weekdays": ["sunday"], "days_of_month": [1, 2, 3, 4, 5, 6, 7], "start": "02:00",
           "duration": "4h"}
WEEKLY = {"name": "weekly", "weekdays": ["sunday"], "start": "02:00", "duration": "2h"}


def epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_first_sunday_window_open_and_closing_time():
    # 2026-03-01 is the first Sunday of March 2026.
    state = window_state([MONTHLY], "2026-03-01T02:30:00Z")
    assert state["open"] and state["window"] == "monthly"
    assert state["opens_at"] == "2026-03-01T02:00:00Z" and state["closes_at"] == "2026-03-01T06:00:00Z"
    assert state["seconds_left"] == 3.5 * 3600 and state["elapsed_s"] == 1800
    assert state["next"] == {"window": "monthly", "opens_at": "2026-04-05T02:00:00Z", "closes_at": "2026-04-05T06:00:00Z"}


def test_second_sunday_is_not_the_first_week_and_names_the_next_window():
    state = window_state([MONTHLY], "2026-03-08T02:30:00Z")
    assert not state["open"] and state["window"] is None and state["closes_at"] is None
    assert state["next"]["opens_at"] == "2026-04-05T02:00:00Z"
    assert "2026-04-05T02:00:00Z" in state["msg"] and "no maintenance window is open" in state["msg"]


def test_boundaries_open_inclusive_close_exclusive():
    assert window_state([MONTHLY], "2026-03-01T02:00:00Z")["open"]
    assert not window_state([MONTHLY], "2026-03-01T06:00:00Z")["open"]
    assert not window_state([MONTHLY], "2026-03-01T01:59:59Z")["open"]


def test_window_across_midnight_and_month_end():
    # Opens on Saturday 2026-02-28 (the last day of February) at 23:00, open into Sunday March 1st.
    late = {"name": "late", "weekdays": ["saturday"], "days_of_month": [28], "start": "23:00", "duration": "3h"}
    state = window_state([late], "2026-03-01T01:15:00Z")
    assert state["open"] and state["opens_at"] == "2026-02-28T23:00:00Z" and state["closes_at"] == "2026-03-01T02:00:00Z"
    assert not window_state([late], "2026-03-01T02:00:00Z")["open"]
    # The next Saturday that is the 28th: March 28th 2026.
    assert window_state([late], "2026-03-01T02:00:00Z")["next"]["opens_at"] == "2026-03-28T23:00:00Z"


def test_several_open_windows_the_one_closing_last_wins():
    state = window_state([WEEKLY, MONTHLY], "2026-03-01T03:00:00Z")
    assert state["window"] == "monthly" and state["closes_at"] == "2026-03-01T06:00:00Z"
    # Past the weekly window's end only the monthly one is open; on a later Sunday only the weekly one.
    assert window_state([WEEKLY, MONTHLY], "2026-03-01T04:30:00Z")["window"] == "monthly"
    later = window_state([WEEKLY, MONTHLY], "2026-03-08T03:00:00Z")
    assert later["window"] == "weekly" and later["closes_at"] == "2026-03-08T04:00:00Z"


def test_forced_run_outside_a_window_is_a_window_from_now():
    state = window_state([MONTHLY], "2026-03-10T12:00:00Z", force=True, forced_duration="30m")
    assert state["forced"] and state["open"] is False and state["window"] == "forced"
    assert state["opens_at"] == "2026-03-10T12:00:00Z" and state["closes_at"] == "2026-03-10T12:30:00Z"
    # Inside a window, force changes nothing.
    assert not window_state([MONTHLY], "2026-03-01T03:00:00Z", force=True)["forced"]


def test_no_window_at_all():
    state = window_state([], "2026-03-01T03:00:00Z")
    assert not state["open"] and state["next"] is None and "no maintenance window" in state["msg"]


def test_clock_keeps_the_offset_of_an_injected_now():
    real = epoch("2030-01-01T00:00:00Z")
    state = window_state([MONTHLY], "2026-03-01T05:59:50Z", real_now=real)
    assert window_clock(state, real_now=real + 5)["open"]
    later = window_clock(state, real_now=real + 15)
    assert not later["open"] and later["seconds_left"] == -5 and later["now"] == "2026-03-01T06:00:05Z"
    assert later["elapsed_s"] == 4 * 3600 + 5


def test_bad_windows_fail_with_a_message():
    with pytest.raises(AnsibleFilterError, match="weekdays"):
        maintenance_window([dict(MONTHLY, weekdays=["sun"])])
    with pytest.raises(AnsibleFilterError, match="HH:MM"):
        maintenance_window([dict(MONTHLY, start="2am")])
    with pytest.raises(AnsibleFilterError, match="days_of_month"):
        maintenance_window([dict(MONTHLY, days_of_month=[0])])
    with pytest.raises(AnsibleFilterError, match="ISO 8601"):
        maintenance_window([MONTHLY], now="next sunday")


def platform(**extra):
    base = {
        "name": "rust-security", "kubernetes": {"kubeconfig": "/k"}, "namespaces": ["rust-security"], "health": {},
        "workloads": [{"kind": "Deployment", "name": "auth-service", "namespace": "rust-security", "wait_timeout": 60,
                       "restart_in_window": True},
                      {"kind": "Deployment", "name": "policy-service", "namespace": "rust-security", "wait_timeout": 60,
                       "restart_in_window": False}],
        "databases": [{"name": "auth_service", "set": "rust-security-auth_service", "backup_options": {}, "health": {},
                       "connection": {"login_host": "db", "login_password": "pw", "ca_cert": "/ca.pem"},
                       "maintenance": {"enabled": True, "operations": ["analyze", "vacuum"], "options": {},
                                       "vacuum_full_tables": ["audit_events"], "vacuum_full_days": [1, 2, 3]},
                       "purge": [{"table": "audit.events", "column": "at", "older_than": "90d",
                                  "options": {"max_duration": "10m", "batch_size": 100}}]}],
        "redis": [], "credentials": [], "signing_keys": [],
        "certificates": {"sources": [], "options": {}},
        "repository": {"repository": "file:///r", "encryption_recipients": ["age1x"], "encryption_identity": "/id"},
        "kubernetes_backup": {"set": "rust-security-kubernetes", "options": {}},
    }
    base.update(extra)
    return base


def args_of(plan, step, index=0, group=None):
    items = plan[step][group] if group else plan[step]
    return plan["args"][items[index]["key"]]


def test_plan_items_hold_no_secrets_and_args_hold_the_connection():
    plan = window_plan(platform(), window_state([MONTHLY], "2026-03-01T03:00:00Z"))
    for step, items in plan.items():
        if step == "args":
            continue
        for item in (items if isinstance(items, list) else [i for group in items.values() for i in group]):
            assert "args" not in item and "pw" not in repr(item) and item["key"] in plan["args"]
    assert args_of(plan, "purge")["login_password"] == "pw"


def test_plan_vacuum_full_only_on_allowed_days_and_listed_tables():
    first = window_plan(platform(), window_state([MONTHLY], "2026-03-01T03:00:00Z"))
    args = args_of(first, "maintenance")
    assert first["maintenance"][0]["vacuum_full"] and args["operations"] == ["analyze", "vacuum", "vacuum_full"]
    assert args["vacuum_full_tables"] == ["audit_events"] and args["db"] == "auth_service"
    fourth = window_plan(platform(), window_state([MONTHLY], "2026-03-04T03:00:00Z", force=True))
    assert args_of(fourth, "maintenance")["operations"] == ["analyze", "vacuum"]
    assert args_of(fourth, "maintenance")["vacuum_full_tables"] == []


def test_plan_purge_restart_backup_and_cleanup():
    plan = window_plan(platform(), window_state([MONTHLY], "2026-03-01T03:00:00Z"))
    purge = plan["purge"][0]
    assert purge["object"] == "Table/auth_service/audit.events" and purge["max_duration_s"] == 600
    purge_args = args_of(plan, "purge")
    assert purge_args["schema"] == "audit" and purge_args["table"] == "events" and "max_duration" not in purge_args
    assert purge_args["batch_size"] == 100 and purge_args["login_password"] == "pw"
    restart = plan["restart"]
    assert [r["object"] for r in restart] == ["Deployment/rust-security/auth-service"]
    restart_args = args_of(plan, "restart")
    assert restart_args["patch"] == {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-03-01T02:00:00Z"}}}
    assert restart_args["action"] == "update" and restart_args["kubeconfig"] == "/k"
    kinds = [b["kind"] for b in plan["backup"]]
    assert kinds == ["postgresql", "kubernetes"]
    verify = plan["args"]["verify " + plan["backup"][1]["key"]]
    assert "encryption_recipients" not in verify and verify["encryption_identity"] == "/id" and verify["kind"] == "kubernetes"
    assert args_of(plan, "cleanup")["action"] == "cleanup"
    assert args_of(plan, "health", group="postgresql")["db"] == "auth_service"


def test_plan_renames_the_database_ca_for_credential_rotation():
    credential = {"service": "postgresql", "target": "auth_service", "rotate_after": "30d",
                  "options": {"role": "app", "secret": {"namespace": "rust-security", "name": "db"}}}
    plan = window_plan(platform(credentials=[credential]), window_state([MONTHLY], "2026-03-01T03:00:00Z"))
    args = args_of(plan, "credentials")
    assert args["ssl_rootcert"] == "/ca.pem" and "ca_cert" not in args and args["rotate_after"] == "30d"
    assert plan["credentials"][0]["object"] == "Secret/rust-security/db"


def test_no_repository_means_no_backup_items():
    plan = window_plan(platform(repository={}), window_state([MONTHLY], "2026-03-01T03:00:00Z"))
    assert plan["backup"] == []


def finding(severity, check, obj):
    return {"severity": severity, "check": check, "object": obj, "message": "m", "details": {}}


def test_new_findings_are_new_or_worse():
    opening = [finding("warning", "pods", "Pod/a"), finding("ok", "workloads", "*")]
    closing = [finding("warning", "pods", "Pod/a"), finding("critical", "workloads", "*"),
               finding("critical", "pods", "Pod/b"), finding("info", "events", "Pod/c")]
    fresh = new_findings(closing, opening)
    assert [(f["check"], f["object"]) for f in fresh] == [("workloads", "*"), ("pods", "Pod/b")]
    assert fresh[0]["details"]["severity_at_opening"] == "ok" and fresh[1]["details"]["severity_at_opening"] is None


def test_report_sections_list_done_skipped_failed_and_new_findings():
    state = window_state([MONTHLY], "2026-03-01T05:59:00Z")
    steps = [
        {"step": "purge", "title": "Purges", "status": "done", "reason": "", "duration_s": 1.5,
         "results": [{"item": {"object": "Table/db/t"}, "changed": True, "deleted": 3, "msg": "deleted 3 row(s)"}]},
        {"step": "restart", "title": "Rolling restarts", "status": "skipped", "reason": "window closed at x",
         "duration_s": 0, "results": []},
        {"step": "cleanup", "title": "Cleanup", "status": "failed", "reason": "boom", "duration_s": 0.2,
         "results": [{"item": {"object": "Namespace/n"}, "failed": True, "msg": "forbidden"}]},
    ]
    opening = [{"results": [{"status": "ok", "findings": [finding("ok", "pods", "*")]}]}]
    closing = [{"status": "critical", "findings": [finding("critical", "pods", "Pod/x")]}]
    sections = maintenance_window_report(steps, state, opening, closing)
    by_name = {s["name"]: s["findings"] for s in sections}
    assert by_name["Purges"][0]["severity"] == "ok" and by_name["Purges"][0]["details"]["deleted"] == 3
    assert "(1.5s)" in by_name["Purges"][0]["message"]
    assert by_name["Rolling restarts"][0]["severity"] == "info"
    assert by_name["Rolling restarts"][0]["message"].startswith("skipped: window closed")
    assert by_name["Cleanup"][0]["severity"] == "critical" and "forbidden" in by_name["Cleanup"][0]["message"]
    assert [f["object"] for f in by_name["New since the opening check"]] == ["Pod/x"]
    assert [s["source"] for s in sections][:2] == ["maintenance_window", "health_before"]
