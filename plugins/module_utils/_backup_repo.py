# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository's own operations (list, verify, prune, cleanup) behind ``backup_repo``."""

from __future__ import annotations

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    RunbookError, Stopwatch, parse_duration, parse_time, utcnow)
from ansible_collections.runbook.ops.plugins.module_utils._findings import finding, sort_findings, summarize
from ansible_collections.runbook.ops.plugins.module_utils._names import check_params
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    Repository, RepositoryMissing, backup_summary, name_rules, public_incomplete)
from ansible_collections.runbook.ops.plugins.module_utils._retention import policy_is_empty
from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities


def _selected(repo: Repository, params: dict) -> t.List[dict]:
    kind, set_name, backup_id = params.get("kind"), params.get("set"), params.get("backup_id")
    if backup_id:
        if not (kind and set_name):
            raise RunbookError("backup_id needs kind and set too")
        return [repo.get(kind, set_name, backup_id)]
    manifests = repo.scan(kind, set_name)[0]
    if not manifests and set_name:
        # A mistyped set must not verify "nothing" successfully.
        raise RunbookError("no complete %s backup of set %r in %s to verify" % (kind, set_name, repo.url))
    return manifests


def _ref(item: dict) -> str:
    return "Backup/%s/%s/%s" % (item["kind"], item["set"], item.get("id") or item.get("backup_id"))


def freshness_findings(manifests: t.List[dict], incomplete: t.List[dict], max_age: t.Optional[str]) -> t.List[dict]:
    """Findings of a repository listing: stale sets (with ``max_age``) and incomplete backups."""
    findings = []
    limit = parse_duration(max_age, "max_age")
    now = utcnow()
    latest: t.Dict[t.Tuple[str, str], dict] = {}
    for manifest in manifests:  # newest first
        latest.setdefault((manifest["kind"], manifest["set"]), manifest)
    for (kind, set_name), manifest in sorted(latest.items()):
        # Age of the data: the backup's start, when its snapshot was taken.
        age = (now - parse_time(manifest["created"], "created")).total_seconds()
        details = {"backup_id": manifest["id"], "age_s": round(age), "created": manifest["created"]}
        obj = "BackupSet/%s/%s" % (kind, set_name)
        if limit and age > limit:
            findings.append(finding("critical", "backup_freshness", obj, "latest complete backup was taken %.1f h ago, above max_age %s"
                                    % (age / 3600.0, max_age), details))
        else:
            findings.append(finding("ok", "backup_freshness", obj, "latest complete backup was taken %.1f h ago" % (age / 3600.0), details))
    for item in incomplete:
        findings.append(finding("warning", "backup_incomplete", _ref(item),
                                "incomplete backup (%s) holding %d bytes; remove it with state=cleanup"
                                % (item["reason"], item["stored_size"]), {"prefix": item["prefix"]}))
    return findings


def _with_findings(result: dict, findings: t.List[dict]) -> dict:
    findings = sort_findings(findings)
    result["status"], result["summary"] = summarize(findings)
    result["findings"] = findings
    return result


def _missing_repository(repo: Repository, exc: RepositoryMissing) -> dict:
    """A mistyped repository URL must not read as "no backups, all fine"."""
    return finding("critical", "backup_repository", "BackupRepository/%s" % repo.url, exc.msg, {"repository": repo.url})


def list_backups(repo: Repository, params: dict) -> dict:
    try:
        repo.backend.require_exists()
        manifests, incomplete = repo.scan(params.get("kind"), params.get("set"), with_uploads=True)
    except RepositoryMissing as exc:
        result = _with_findings({"changed": False, "backups": [], "incomplete": []}, [_missing_repository(repo, exc)])
        result["_fail_msg"] = exc.msg
        return result
    if params.get("backup_id"):
        manifests = [m for m in manifests if m["id"] == params["backup_id"]]
    result = {"changed": False, "backups": [backup_summary(m) for m in manifests],
              "incomplete": public_incomplete(incomplete)}
    return _with_findings(result, freshness_findings(manifests, incomplete, params.get("max_age")))


def verify_backups(repo: Repository, params: dict) -> dict:
    identities = load_identities(params.get("encryption_identity"))
    try:
        repo.backend.require_exists()
    except RepositoryMissing as exc:
        result = _with_findings({"changed": False, "verified": []}, [_missing_repository(repo, exc)])
        result["_fail_msg"] = exc.msg
        return result
    selected = _selected(repo, params)
    if params.get("latest_only"):
        newest: t.Dict[t.Tuple[str, str], dict] = {}
        for manifest in selected:
            newest.setdefault((manifest["kind"], manifest["set"]), manifest)
        selected = list(newest.values())
    verified = [repo.verify(manifest, identities) for manifest in selected]
    result: dict = {"changed": False, "verified": verified}
    findings = [finding("ok" if v["ok"] else "critical", "backup_verify", _ref(dict(v, id=v["backup_id"])),
                        "verified (%s)" % v["level"] if v["ok"] else "; ".join(v["problems"]), {"level": v["level"]})
                for v in verified]
    if not verified:
        findings.append(finding("warning", "backup_verify", "BackupRepository/%s" % repo.url,
                                "no complete backup in scope to verify", {"kind": params.get("kind")}))
    _with_findings(result, findings)
    bad = [v for v in verified if not v["ok"]]
    if bad:
        result["_fail_msg"] = "%d of %d backups failed verification: %s" % (
            len(bad), len(verified), "; ".join("%s/%s/%s: %s" % (v["kind"], v["set"], v["backup_id"], ", ".join(v["problems"]))
                                               for v in bad))
    return result


def prune_backups(repo: Repository, params: dict, check_mode: bool) -> dict:
    policy = params.get("retention") or {}
    if policy_is_empty(policy):
        raise RunbookError("state=prune needs a retention policy with at least one keep_* above 0")
    repo.backend.require_exists()
    kept, removed = repo.prune(policy, params.get("kind"), params.get("set"), dry_run=check_mode)
    return {"changed": bool(removed), "removed": removed, "kept": kept,
            "diff": {"before": {"backups": sorted(b["id"] for b in kept + removed)},
                     "after": {"backups": sorted(b["id"] for b in kept)}}}


def cleanup_repository(repo: Repository, params: dict, check_mode: bool) -> dict:
    repo.backend.require_exists()
    backups, uploads = repo.cleanup(params["older_than"], params.get("kind"), params.get("set"), dry_run=check_mode)
    return {"changed": bool(backups or uploads), "removed": backups, "aborted_uploads": uploads}


STATES = ("list", "verify", "prune", "cleanup")


def run(module: t.Any) -> dict:
    watch = Stopwatch()
    params = module.params
    if params["state"] not in STATES:
        raise RunbookError("state must be one of %s, got %r" % (", ".join(STATES), params["state"]))
    check_params(params, name_rules())
    repo = Repository.from_options(params)
    state = params["state"]
    if state == "list":
        result = list_backups(repo, params)
    elif state == "verify":
        result = verify_backups(repo, params)
    elif state == "prune":
        result = prune_backups(repo, params, module.check_mode)
    else:
        result = cleanup_repository(repo, params, module.check_mode)
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    result.update(repository=repo.url, duration_s=watch.elapsed)
    return result
