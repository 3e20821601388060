# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a backup run of the role ``runbook.ops.backup`` means, decided once (documented in ``backup_plan.yml``,
``backup_outcome.yml``, ``backup_report_sections.yml`` and ``backup_metrics.yml``).

The role only sequences modules. Which sets a platform has and which module proves which verification
level (:func:`backup_plan`), what the registered results say about each set (:func:`backup_outcome`),
and how that reads in a report and as metrics (:func:`backup_report_sections`, :func:`backup_metrics`)
are pure functions of their inputs, unit-tested without Ansible."""

from __future__ import annotations

import re
import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, parse_duration, parse_time, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._findings import finding
from ansible_collections.runbook.ops.plugins.module_utils._names import human_bytes

Json = t.Dict[str, t.Any]

KINDS = ("postgresql", "redis", "kubernetes")
KIND_TITLES = {"postgresql": "PostgreSQL", "redis": "Redis", "kubernetes": "Kubernetes"}
# The module that proves each level. Stored bytes (and their decryption) are read the same way for
# every kind by the repository module; the deeper levels only the kind's own module can check.
VERIFY_LEVELS: t.Dict[str, t.Dict[str, t.Optional[str]]] = {
    "postgresql": {"none": None, "checksum": "backup_repo", "decrypt": "backup_repo",
                   "archive": "pg_backup", "restore": "pg_backup"},
    "redis": {"none": None, "checksum": "backup_repo", "decrypt": "backup_repo",
              "rdb": "redis_snapshot", "load": "redis_snapshot"},
    "kubernetes": {"none": None, "checksum": "backup_repo", "decrypt": "backup_repo"},
}
DEFAULT_LEVELS = {"postgresql": "archive", "redis": "rdb", "kubernetes": "decrypt"}
# The kinds whose data gets a canary (runbook.ops.data_canary) right before its backup.
CANARY_KINDS = ("postgresql", "redis")
_SOURCE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


# --------------------------------------------------------------------------------------------- plan

def _levels(levels: t.Any) -> t.Dict[str, str]:
    given = dict(levels or {})
    unknown = sorted(set(given) - set(KINDS))
    if unknown:
        raise AnsibleFilterError("backup_plan: verify levels for unknown kinds %s (known: %s)"
                                 % (", ".join(unknown), ", ".join(KINDS)))
    chosen = dict(DEFAULT_LEVELS, **given)
    for kind, level in chosen.items():
        if level not in VERIFY_LEVELS[kind]:
            raise AnsibleFilterError("backup_plan: %r is not a verify level of %s backups (one of %s)"
                                     % (level, kind, ", ".join(VERIFY_LEVELS[kind])))
    return chosen


def _entry(kind: str, set_name: str, name: str, index: int, level: str) -> Json:
    return {"kind": kind, "set": set_name, "name": name, "index": index,
            "object": "BackupSet/%s/%s" % (kind, set_name),
            "verify_level": level, "verify_with": VERIFY_LEVELS[kind][level]}


def _with_sources(entries: t.List[Json]) -> t.List[Json]:
    """A report source id per set (letters, digits, ``_ . -``), unique even when set names differ only in other characters."""
    seen: t.Set[str] = set()
    for entry in entries:
        base = "%s.%s" % (entry["kind"], _SOURCE_CHARS.sub("_", entry["set"]))
        source, count = base, 1
        while source in seen:
            count += 1
            source = "%s-%d" % (base, count)
        seen.add(source)
        entry["source"] = source
    return entries


def backup_plan(platform: t.Any, levels: t.Any = None, kinds: t.Any = None, sets: t.Any = None) -> t.List[Json]:
    """The sets a platform description (with its defaults filled in) asks to back up, each with the module
    and level that verifies it. Holds names and indexes only, never connection settings (a loop item is
    printed with ``-v``)."""
    if not isinstance(platform, t.Mapping) or "name" not in platform:
        raise AnsibleFilterError("backup_plan expects runbook_platform as the platform role leaves it")
    chosen = _levels(levels)
    wanted_kinds = list(kinds) if kinds else list(KINDS)
    unknown = sorted(set(wanted_kinds) - set(KINDS))
    if unknown:
        raise AnsibleFilterError("backup_plan: unknown kinds %s (known: %s)" % (", ".join(unknown), ", ".join(KINDS)))
    if not platform.get("repository"):
        return []
    entries = [_entry("postgresql", db["set"], db["name"], i, chosen["postgresql"])
               for i, db in enumerate(platform.get("databases") or []) if db.get("backup", True)]
    entries += [_entry("redis", redis["set"], redis["name"], i, chosen["redis"])
                for i, redis in enumerate(platform.get("redis") or []) if redis.get("backup", True)]
    k8s = platform.get("kubernetes_backup") or {}
    if k8s.get("enabled", True) and platform.get("namespaces"):
        entries.append(_entry("kubernetes", k8s["set"], platform["name"], 0, chosen["kubernetes"]))
    entries = [entry for entry in entries if entry["kind"] in wanted_kinds]
    if sets:
        known = {entry["set"] for entry in entries}
        missing = sorted(set(sets) - known)
        if missing:
            raise AnsibleFilterError("backup_plan: sets %s are not backed up on platform %s (its sets: %s)"
                                     % (", ".join(missing), platform["name"], ", ".join(sorted(known)) or "none"))
        entries = [entry for entry in entries if entry["set"] in sets]
    return _with_sources(entries)


def backup_due(plan: t.Any, listings: t.Any = None, max_age: t.Any = "", now: t.Any = None) -> t.List[Json]:
    """The PostgreSQL and Redis entries of the plan whose backup is due, judged as ``pg_backup`` and
    ``redis_snapshot`` judge ``max_age`` (the newest complete backup finished at least that long ago), from
    ``backup_repo_info`` results registered per set. A set whose listing failed counts as due: its canary
    costs one row, and the backup task reports the repository's failure itself."""
    if not isinstance(plan, list):
        raise AnsibleFilterError("backup_due expects the plan made by runbook.ops.backup_plan")
    try:
        seconds = parse_duration(str(max_age) if max_age not in (None, "") else None, "max_age")
        moment = parse_time(now, "now") if now else utcnow()
    except RunbookError as exc:
        raise AnsibleFilterError("backup_due: %s" % exc.msg)
    listed = _by_set([listings] if isinstance(listings, t.Mapping) else listings)
    due = []
    for entry in plan:
        if entry["kind"] not in CANARY_KINDS:
            continue
        result = listed.get((entry["kind"], entry["set"]))
        backups = (result or {}).get("backups") or []
        if seconds and result is not None and not result.get("failed") and backups:
            newest = backups[0]
            age = (moment - parse_time(newest.get("finished") or newest["created"], "finished")).total_seconds()
            if age < seconds:
                continue
        due.append(entry)
    return due


# ------------------------------------------------------------------------------------------ outcome

def _plan_entry(result: t.Mapping[str, t.Any]) -> t.Optional[Json]:
    """The plan entry a loop result was for, following loop variables (an ``async_status`` result's
    loop variable is the launch result, whose own loop variable is the entry)."""
    current: t.Any = result
    for _depth in range(3):
        if not isinstance(current, t.Mapping):
            return None
        if "kind" in current and "set" in current and "verify_with" in current:
            return dict(current)
        current = current.get(current.get("ansible_loop_var") or "item")
    return None


def _items(registered: t.Any) -> t.List[t.Tuple[t.Tuple[str, str], Json]]:
    """``((kind, set), result)`` for every item of registered loop results that ran (launches of async
    jobs and items skipped by a condition are left out: the job's final result stands for its launch)."""
    found = []
    for task in registered or []:
        if not isinstance(task, t.Mapping):
            continue
        for result in task.get("results") or []:
            if not isinstance(result, t.Mapping) or "skip_reason" in result:
                continue
            if result.get("ansible_job_id") and result.get("started") and "finished" not in result:
                continue
            entry = _plan_entry(result)
            if entry is not None:
                found.append(((entry["kind"], entry["set"]), dict(result)))
    return found


def _by_set(registered: t.Any) -> t.Dict[t.Tuple[str, str], Json]:
    return dict(_items(registered))


def _message(result: t.Mapping[str, t.Any]) -> str:
    msg = str(result.get("msg") or "no message")
    if result.get("ansible_job_id") and not result.get("finished"):
        return "did not finish in time (%s)" % msg
    return msg


def _backup_state(record: Json, result: t.Optional[Json]) -> None:
    if result is None:
        record.update(failed=True, failed_stage="backup", error="no backup result: the backup task did not run for this set")
        return
    if result.get("failed") or (result.get("ansible_job_id") and not result.get("finished")):
        record.update(failed=True, failed_stage="backup", error="backup failed: %s" % _message(result))
        return
    manifest = result.get("manifest") or {}
    record.update(backup_id=result.get("backup_id"), message=str(result.get("msg") or ""),
                  size=manifest.get("size"), duration_s=result.get("duration_s"))
    if result.get("skipped") and result.get("backup_id"):
        record["not_due"] = True
    elif result.get("backup_id"):
        record["taken"] = True
    else:
        record["check_mode"] = True


def _verify_state(record: Json, result: t.Optional[Json]) -> None:
    if not record["taken"] or record["verify_with"] is None:
        return
    if result is None:
        return
    entries = [entry for entry in result.get("verified") or [] if entry.get("backup_id") == record["backup_id"]]
    problems = [problem for entry in entries for problem in entry.get("problems") or []]
    if entries:
        record["verify_level"] = entries[0].get("level") or record["verify_level"]
    if result.get("failed") or problems or not entries or not all(entry.get("ok") for entry in entries):
        reason = "; ".join(problems) or _message(result)
        record.update(verified=False, failed=True, failed_stage="verify", error="verification (%s) failed: %s" % (record["verify_level"], reason))
    else:
        record["verified"] = True


def _prune_state(record: Json, result: t.Optional[Json]) -> None:
    if result is None:
        return
    if result.get("failed"):
        record.update(failed=True, failed_stage="retention", error="retention failed: %s" % _message(result))
        return
    record.update(retention_applied=True, pruned=[item.get("id") for item in result.get("pruned") or []],
                  kept=len(result.get("kept") or []))


def _freshness(registered: t.Any) -> t.Dict[str, Json]:
    """``{BackupSet/<kind>/<set>: details}`` from ``backup_repo_info`` results (one or a loop of them)."""
    results: t.List[t.Any] = []
    for task in registered or []:
        if isinstance(task, t.Mapping):
            results.extend(task.get("results") or [task])
    ages = {}
    for result in results:
        for item in (result or {}).get("findings") or []:
            if item.get("check") == "backup_freshness" and "age_s" in (item.get("details") or {}):
                ages[item["object"]] = item["details"]
    return ages


def _canary_state(record: Json, result: t.Optional[Json]) -> None:
    """A canary that could not be written is a warning, never a failed backup."""
    if result is None:
        return
    if result.get("failed"):
        record["canary_error"] = _message(result)
    elif result.get("written_at"):
        record["canary_written_at"] = result["written_at"]


def backup_outcome(plan: t.Any, backups: t.Any = None, verifications: t.Any = None, prunes: t.Any = None,
                   freshness: t.Any = None, canaries: t.Any = None) -> t.List[Json]:
    """One record per planned set from the registered results of each phase (loops, possibly async)."""
    if not isinstance(plan, list):
        raise AnsibleFilterError("backup_outcome expects the plan made by runbook.ops.backup_plan")
    taken, verified, pruned = _by_set(backups), _by_set(verifications), _by_set(prunes)
    written = _by_set(canaries)
    ages = _freshness(freshness)
    records = []
    for entry in plan:
        key = (entry["kind"], entry["set"])
        record: Json = {"kind": entry["kind"], "set": entry["set"], "name": entry["name"], "index": entry["index"],
                        "object": entry["object"],
                        "source": entry["source"], "backup_id": None, "taken": False, "not_due": False,
                        "check_mode": False, "failed": False, "failed_stage": None, "error": "", "message": "", "size": None,
                        "duration_s": None, "verified": None, "verify_level": entry["verify_level"],
                        "verify_with": entry["verify_with"], "retention_applied": False, "pruned": [], "kept": None,
                        "age_s": None, "canary_written_at": None, "canary_error": None}
        _canary_state(record, written.get(key))
        _backup_state(record, taken.get(key))
        _verify_state(record, verified.get(key))
        _prune_state(record, pruned.get(key))
        fresh = ages.get(entry["object"])
        if fresh is not None:
            record["age_s"] = fresh["age_s"]
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------- report

def _age_text(seconds: t.Optional[float]) -> str:
    if seconds is None:
        return "of unknown age"
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    if seconds < 172800:
        return "%.1f h" % (seconds / 3600.0)
    return "%.1f d" % (seconds / 86400.0)


def _run_finding(record: Json, interval: str) -> Json:
    obj = record["object"]
    if record["failed_stage"] == "backup":
        return finding("critical", "backup_run", obj, record["error"])
    if record["not_due"]:
        due = " (due every %s)" % interval if interval else ""
        return finding("ok", "backup_run", obj, "not due: newest backup %s is %s old%s"
                       % (record["backup_id"], _age_text(record["age_s"]), due),
                       {"backup_id": record["backup_id"], "age_s": record["age_s"], "taken": False})
    if record["check_mode"]:
        return finding("info", "backup_run", obj, record["message"] or "check mode: nothing written", {"taken": False})
    duration = " in %.1f s" % record["duration_s"] if record["duration_s"] is not None else ""
    return finding("ok", "backup_run", obj, "backup %s taken (%s stored%s)"
                   % (record["backup_id"], human_bytes(record["size"]), duration),
                   {"backup_id": record["backup_id"], "taken": True, "size": record["size"]})


def _verify_finding(record: Json) -> t.Optional[Json]:
    if not record["taken"]:
        return None
    obj = "Backup/%s/%s/%s" % (record["kind"], record["set"], record["backup_id"])
    if record["verified"] is True:
        return finding("ok", "backup_verify", obj, "verified (%s)" % record["verify_level"], {"level": record["verify_level"]})
    if record["verified"] is False:
        return finding("critical", "backup_verify", obj, record["error"], {"level": record["verify_level"]})
    if record["verify_with"] is None:
        return finding("info", "backup_verify", obj, "not verified: the verify level of %s backups is none" % record["kind"])
    return finding("unknown", "backup_verify", obj, "not verified: no verification result")


def _retention_finding(record: Json, failed_sets: t.List[str], prune: bool) -> t.Optional[Json]:
    obj = record["object"]
    if not prune:
        return None
    if record["failed_stage"] == "retention":
        return finding("critical", "backup_retention", obj, record["error"])
    if record["retention_applied"]:
        if record["pruned"]:
            return finding("info", "backup_retention", obj, "retention removed %d backup(s): %s"
                           % (len(record["pruned"]), ", ".join(record["pruned"])), {"pruned": record["pruned"]})
        return finding("ok", "backup_retention", obj, "retention removed nothing (%s kept)" % record["kept"],
                       {"pruned": []})
    if failed_sets:
        return finding("warning", "backup_retention", obj, "retention not applied: %s failed in this run"
                       % ", ".join(failed_sets))
    return None


def _canary_finding(record: Json) -> t.Optional[Json]:
    obj = "Canary/%s/%s" % (record["kind"], record["set"])
    if record.get("canary_error"):
        return finding("warning", "backup_canary", obj, "no canary was written before the backup, so a restore of it "
                       "cannot prove its recovery point: %s" % record["canary_error"])
    if record.get("canary_written_at"):
        return finding("ok", "backup_canary", obj, "canary written at %s, right before the backup"
                       % record["canary_written_at"], {"written_at": record["canary_written_at"]})
    return None


def backup_report_sections(records: t.Any, interval: t.Any = "", prune: t.Any = True) -> t.List[Json]:
    """``runbook.ops.findings_report`` sections, one per set: the backup, its verification and retention."""
    if not isinstance(records, list):
        raise AnsibleFilterError("backup_report_sections expects the records made by runbook.ops.backup_outcome")
    if not records:
        return [{"name": "Backups", "source": "backup", "findings": [finding(
            "info", "backup_run", "Platform", "nothing to back up: the platform lists no repository, "
            "or no set was selected")]}]
    failed_sets = [record["set"] for record in records if record["failed"]]
    sections = []
    for record in records:
        found = [_canary_finding(record), _run_finding(record, str(interval or "")), _verify_finding(record),
                 _retention_finding(record, failed_sets, bool(prune))]
        sections.append({"name": "%s %s" % (KIND_TITLES.get(record["kind"], record["kind"]), record["set"]),
                         "source": record["source"], "findings": [item for item in found if item is not None]})
    return sections


def backup_metrics(records: t.Any) -> t.List[Json]:
    """Gauges for the Prometheus textfile: the age of each set's newest backup, and whether the set failed."""
    if not isinstance(records, list):
        raise AnsibleFilterError("backup_metrics expects the records made by runbook.ops.backup_outcome")
    metrics = []
    for record in records:
        labels = {"set": record["set"], "kind": record["kind"]}
        if record["age_s"] is not None:
            metrics.append({"name": "runbook_backup_age_seconds", "labels": labels, "value": float(record["age_s"]),
                            "help": "Seconds since the newest complete backup of the set was taken."})
        metrics.append({"name": "runbook_backup_failed", "labels": labels, "value": 1.0 if record["failed"] else 0.0,
                        "help": "1 when the last backup run failed for the set (backup, verification or retention)."})
    return metrics


class FilterModule:
    """runbook.ops backup run filters."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"backup_plan": backup_plan, "backup_due": backup_due, "backup_outcome": backup_outcome,
                "backup_report_sections": backup_report_sections, "backup_metrics": backup_metrics}
