"""The backup role's filters: which sets a platform has, what registered results mean per set, how a run reads."""

from __future__ import annotations

import copy
import typing as t
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.filter.backup_plan import (
    backup_due, backup_metrics, backup_outcome, backup_plan, backup_report_sections)
from ansible_collections.runbook.ops.plugins.filter.platform_description import platform_description

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/platform/meta/argument_specs.yml").read_text())

PLATFORM = platform_description({
    "name": "rust-security",
    "namespaces": ["rust-security"],
    "databases": [{"name": "auth_service", "connection": {"login_password": "secret-pg"}},
                  {"name": "scratch", "backup": False}],
    "redis": [{"name": "redis", "connection": {"login_password": "secret-redis"}}],
    "repository": {"repository": "s3://b/p", "secret_key": "secret-s3"},
}, SPEC)


def plan(**kwargs: t.Any) -> t.List[dict]:
    return backup_plan(copy.deepcopy(PLATFORM), **kwargs)


def loop(*results: dict) -> dict:
    """A registered loop, as Ansible leaves it."""
    return {"results": [dict(result, ansible_loop_var="item") for result in results]}


def test_plan_lists_every_set_with_its_verifier_and_no_secret() -> None:
    entries = plan()
    assert [(e["kind"], e["set"]) for e in entries] == [
        ("postgresql", "rust-security-auth_service"), ("redis", "rust-security-redis"),
        ("kubernetes", "rust-security-kubernetes")]
    assert [(e["verify_level"], e["verify_with"]) for e in entries] == [
        ("archive", "pg_backup"), ("rdb", "redis_snapshot"), ("decrypt", "backup_repo")]
    assert "secret" not in repr(entries)
    assert entries[0]["source"] == "postgresql.rust-security-auth_service"


def test_plan_honours_levels_kinds_sets_and_an_empty_repository() -> None:
    entries = plan(levels={"postgresql": "checksum", "kubernetes": "none"}, kinds=["postgresql", "kubernetes"])
    assert [(e["kind"], e["verify_with"]) for e in entries] == [("postgresql", "backup_repo"), ("kubernetes", None)]
    assert [e["set"] for e in plan(sets=["rust-security-redis"])] == ["rust-security-redis"]
    empty = copy.deepcopy(PLATFORM)
    empty["repository"] = {}
    assert backup_plan(empty) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"levels": {"kubernetes": "archive"}}, "not a verify level of kubernetes"),
    ({"levels": {"mysql": "checksum"}}, "unknown kinds mysql"),
    ({"kinds": ["etcd"]}, "unknown kinds etcd"),
    ({"sets": ["nope"]}, "sets nope are not backed up on platform rust-security"),
])
def test_plan_refuses_mistakes_naming_them(kwargs: t.Dict[str, t.Any], message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        plan(**kwargs)


def _records(backups: t.List[t.Any], verifications: t.Any = None, prunes: t.Any = None, freshness: t.Any = None):
    return backup_outcome(plan(), backups=backups, verifications=verifications, prunes=prunes, freshness=freshness)


def test_outcome_of_a_run_in_turn_taken_not_due_failed() -> None:
    pg, redis, k8s = plan()
    records = _records(
        [loop({"item": pg, "changed": True, "backup_id": "B1", "manifest": {"size": 2048}, "duration_s": 1.5}),
         loop({"item": redis, "changed": False, "skipped": True, "backup_id": "B0"}),
         loop({"item": k8s, "failed": True, "msg": "S3 unreachable"})],
        verifications=[loop({"item": dict(pg, backup_id="B1"), "verified": [
            {"backup_id": "B1", "level": "archive", "ok": True, "problems": []}]})],
        freshness=[loop({"item": redis, "findings": [{"check": "backup_freshness", "object": redis["object"],
                                                      "details": {"age_s": 7300, "backup_id": "B0"}}]})])
    by_kind = {r["kind"]: r for r in records}
    assert by_kind["postgresql"]["taken"] and by_kind["postgresql"]["verified"] is True
    assert by_kind["redis"]["not_due"] and not by_kind["redis"]["taken"] and by_kind["redis"]["backup_id"] == "B0"
    assert by_kind["redis"]["age_s"] == 7300 and by_kind["redis"]["verified"] is None
    assert by_kind["kubernetes"]["failed"] and by_kind["kubernetes"]["error"] == "backup failed: S3 unreachable"
    sections = backup_report_sections(records, interval="23h")
    findings = {(s["source"], f["check"]): f for s in sections for f in s["findings"]}
    assert findings[("redis.rust-security-redis", "backup_run")]["message"] == \
        "not due: newest backup B0 is 2.0 h old (due every 23h)"
    assert findings[("kubernetes.rust-security-kubernetes", "backup_run")]["severity"] == "critical"
    assert findings[("postgresql.rust-security-auth_service", "backup_verify")]["severity"] == "ok"
    # No retention ran: every set says why.
    assert findings[("redis.rust-security-redis", "backup_retention")]["message"] == \
        "retention not applied: rust-security-kubernetes failed in this run"


def test_outcome_of_async_jobs_uses_the_final_result_not_the_launch() -> None:
    pg = plan()[0]
    launch = {"item": pg, "ansible_job_id": "j1", "started": 1, "finished": 0, "ansible_loop_var": "item"}
    final = {"backup__job": launch, "ansible_loop_var": "backup__job", "ansible_job_id": "j1", "finished": 1,
             "changed": True, "backup_id": "B2"}
    record = _records([{"results": [launch]}, {"results": [final]}])[0]
    assert record["taken"] and record["backup_id"] == "B2" and not record["failed"]
    timed_out = dict(final, finished=0, failed=True, msg="retries exceeded")
    record = _records([{"results": [launch]}, {"results": [timed_out]}])[0]
    assert record["failed"] and "did not finish in time" in record["error"]


def test_a_failed_verification_fails_the_set_and_a_missing_result_is_never_ok() -> None:
    pg = plan()[0]
    taken = loop({"item": pg, "changed": True, "backup_id": "B1"})
    bad = loop({"item": pg, "failed": True, "msg": "sha256 differs", "verified": [
        {"backup_id": "B1", "level": "archive", "ok": False, "problems": ["data: sha256 differs"]}]})
    record = _records([taken], verifications=[bad])[0]
    assert record["failed"] and record["verified"] is False and record["error"] == \
        "verification (archive) failed: data: sha256 differs"
    assert _records([])[0]["failed"]
    unverified = backup_report_sections(_records([taken]))[0]["findings"]
    assert [f["severity"] for f in unverified if f["check"] == "backup_verify"] == ["unknown"]


def test_retention_results_and_metrics() -> None:
    pg = plan()[0]
    fresh = {"check": "backup_freshness", "object": pg["object"], "details": {"age_s": 12}}
    records = _records([loop({"item": pg, "changed": True, "backup_id": "B9"})],
                       verifications=[loop({"item": pg, "verified": [{"backup_id": "B9", "ok": True, "level": "archive"}]})],
                       prunes=[loop({"item": pg, "pruned": [{"id": "B1"}, {"id": "B2"}], "kept": [{"id": "B9"}]})],
                       freshness=[loop({"item": pg, "findings": [fresh]})])
    assert records[0]["pruned"] == ["B1", "B2"] and records[0]["retention_applied"]
    retention = [f for f in backup_report_sections(records)[0]["findings"] if f["check"] == "backup_retention"]
    assert retention[0]["severity"] == "info" and "B1, B2" in retention[0]["message"]
    metrics = backup_metrics(records)
    age = [m for m in metrics if m["name"] == "runbook_backup_age_seconds"]
    assert age == [{"name": "runbook_backup_age_seconds", "labels": {"set": "rust-security-auth_service",
                                                                     "kind": "postgresql"},
                    "value": 12.0, "help": age[0]["help"]}]
    failed = {m["labels"]["set"]: m["value"] for m in metrics if m["name"] == "runbook_backup_failed"}
    assert failed == {"rust-security-auth_service": 0.0, "rust-security-redis": 1.0, "rust-security-kubernetes": 1.0}


def test_nothing_to_back_up_is_said_not_hidden() -> None:
    sections = backup_report_sections([])
    assert sections[0]["findings"][0]["severity"] == "info"
    assert "nothing to back up" in sections[0]["findings"][0]["message"]


def _listing(entry: dict, finished: t.Optional[str]) -> dict:
    backups = [{"id": "b", "created": finished, "finished": finished}] if finished else []
    return {"item": entry, "backups": backups, "changed": False}


def test_only_the_postgresql_and_redis_sets_that_are_due_get_a_canary() -> None:
    entries = plan()
    pg, redis = entries[0], entries[1]
    now = "2026-11-24T12:00:00Z"
    listings = loop(_listing(pg, "2026-11-24T11:30:00Z"), _listing(redis, "2026-11-24T09:00:00Z"))
    due = [e["kind"] for e in backup_due(entries, listings=listings, max_age="1h", now=now)]
    assert due == ["redis"]  # PostgreSQL's newest backup is 30 min old; Kubernetes never gets a canary
    assert [e["kind"] for e in backup_due(entries, listings=listings, max_age="0", now=now)] == ["postgresql", "redis"]
    # No backup yet, or a listing that failed: due.
    failed = loop(dict(_listing(pg, "2026-11-24T11:30:00Z"), failed=True, msg="bucket gone"), _listing(redis, None))
    assert [e["kind"] for e in backup_due(entries, listings=failed, max_age="1h", now=now)] == ["postgresql", "redis"]
    with pytest.raises(AnsibleFilterError, match="not a duration"):
        backup_due(entries, listings=listings, max_age="soon")


def test_a_failed_canary_is_a_warning_never_a_failed_set() -> None:
    entries = plan()
    backups = [loop(dict(item=entries[0], changed=True, backup_id="p1", manifest={"size": 1}),
                    dict(item=entries[1], changed=True, backup_id="r1", manifest={"size": 1}),
                    dict(item=entries[2], changed=True, backup_id="k1", manifest={"size": 1}))]
    canaries = [loop(dict(item=entries[0], changed=True, written_at="2026-11-24T11:59:58Z", token="t")),
                loop(dict(item=entries[1], failed=True, msg="NOPERM this user has no permissions to run 'set'"))]
    records = backup_outcome(entries, backups=backups, canaries=canaries)
    assert [r["failed"] for r in records] == [False, False, False]
    assert records[0]["canary_written_at"] == "2026-11-24T11:59:58Z" and records[0]["canary_error"] is None
    assert "NOPERM" in records[1]["canary_error"]
    sections = backup_report_sections(records, prune=False)
    canary = {s["source"]: [f for f in s["findings"] if f["check"] == "backup_canary"] for s in sections}
    assert [f["severity"] for f in canary["postgresql.rust-security-auth_service"]] == ["ok"]
    assert [f["severity"] for f in canary["redis.rust-security-redis"]] == ["warning"]
    assert "NOPERM" in canary["redis.rust-security-redis"][0]["message"]
    assert canary["kubernetes.rust-security-kubernetes"] == []
