# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository's own operations: what it holds and how fresh it is (``backup_repo_info``), and
verify, prune and cleanup (``backup_repo``).

Every result judges the repository as findings (``status``, ``summary``, ``findings``), also on
failure: a missing repository is a ``critical`` ``backup_repository`` finding in the failed result,
so a report that runs with ``failed_when: false`` still shows it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils import _custody as custody
from ansible_collections.runbook.ops.plugins.module_utils._backup_job import verified_entry
from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, options_from, parse_duration, parse_time, utcnow)
from ansible_collections.runbook.ops.plugins.module_utils._findings import Finding, finding, sort_findings, summarize
from ansible_collections.runbook.ops.plugins.module_utils._names import check_params
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    Json, Repository, RepositoryMissing, backup_summary, name_rules, public_incomplete)
from ansible_collections.runbook.ops.plugins.module_utils._retention import check_policy, policy_is_empty
from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities

STATES = ("verify", "prune", "cleanup")


@dataclasses.dataclass(frozen=True)
class BackupRepoInfoOptions:
    """What ``backup_repo_info`` reads: the scope and the freshness limit."""

    kind: t.Optional[str]
    set: t.Optional[str]
    backup_id: t.Optional[str]
    max_age: t.Optional[float]
    max_age_text: t.Optional[str]

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "BackupRepoInfoOptions":
        check_params(params, name_rules())
        return options_from(cls, params, max_age=parse_duration(params["max_age"], "max_age"),
                            max_age_text=params["max_age"])


@dataclasses.dataclass(frozen=True)
class BackupRepoOptions:
    """What ``backup_repo`` reads. ``identities`` are the loaded age secret keys (verify only)."""

    state: str
    kind: t.Optional[str]
    set: t.Optional[str]
    backup_id: t.Optional[str]
    latest_only: bool
    older_than: float
    retention: t.Optional[t.Dict[str, t.Any]]
    identities: t.Tuple[t.Any, ...] = dataclasses.field(repr=False)

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "BackupRepoOptions":
        check_params(params, name_rules())
        check_policy(params["retention"])
        identities = load_identities(params["encryption_identity"]) if params["state"] == "verify" else []
        return options_from(cls, params, older_than=parse_duration(params["older_than"], "older_than") or 0.0,
                            identities=tuple(identities))


# --------------------------------------------------------------------------- findings

def _ref(item: t.Mapping[str, t.Any]) -> str:
    return "Backup/%s/%s/%s" % (item["kind"], item["set"], item.get("id") or item.get("backup_id"))


def freshness_findings(manifests: t.Sequence[Json], incomplete: t.Sequence[Json], max_age: t.Optional[float],
                       max_age_text: t.Optional[str] = None) -> t.List[Finding]:
    """Findings of a repository listing: one per set (stale above ``max_age`` seconds) and one
    per incomplete backup."""
    findings = []
    now = utcnow()
    latest: t.Dict[t.Tuple[str, str], Json] = {}
    for manifest in manifests:  # newest first
        latest.setdefault((manifest["kind"], manifest["set"]), manifest)
    for (kind, set_name), manifest in sorted(latest.items()):
        # Age of the data: the backup's start, when its snapshot was taken.
        age = (now - parse_time(manifest["created"], "created")).total_seconds()
        details = {"backup_id": manifest["id"], "age_s": round(age), "created": manifest["created"]}
        if max_age:
            details["max_age_s"] = round(max_age)
        obj = "BackupSet/%s/%s" % (kind, set_name)
        if max_age and age > max_age:
            findings.append(finding("critical", "backup_freshness", obj, "latest complete backup was taken %.1f h ago, above max_age %s"
                                    % (age / 3600.0, max_age_text or "%ds" % max_age), details))
        else:
            findings.append(finding("ok", "backup_freshness", obj, "latest complete backup was taken %.1f h ago" % (age / 3600.0), details))
    findings += partial_findings(manifests)
    for item in incomplete:
        findings.append(finding("warning", "backup_incomplete", _ref(item),
                                "incomplete backup (%s) holding %d bytes; remove it with backup_repo state=cleanup"
                                % (item["reason"], item["stored_size"]), {"prefix": item["prefix"]}))
    return findings


def partial_findings(manifests: t.Sequence[Json]) -> t.List[Finding]:
    """A ``warning`` per complete backup whose manifest says part of its source could not be read
    (``kubernetes.unreadable``: kinds the credentials could not list)."""
    findings = []
    for manifest in manifests:
        unreadable = (manifest.get("kubernetes") or {}).get("unreadable") or []
        if unreadable:
            what = sorted({"%s%s" % (u.get("kind"), " in %s" % u["namespace"] if u.get("namespace") else "")
                           for u in unreadable})
            findings.append(finding("warning", "backup_partial", _ref(manifest),
                                    "partial backup: %s could not be read" % ", ".join(what),
                                    {"unreadable": unreadable}))
    return findings


def _with_findings(result: Result, findings: t.List[Finding]) -> Result:
    findings = sort_findings(findings)
    result["status"], result["summary"] = summarize(findings)
    result["findings"] = findings
    return result


@contextlib.contextmanager
def _failures_keep_the_report(repo: Repository, empty: Result) -> t.Iterator[None]:
    """Every failure names the repository; a missing one also fails with a ``critical`` finding
    (a mistyped URL must not read as "no backups, all fine") and the empty result fields."""
    try:
        yield
    except RepositoryMissing as exc:
        missing = finding("critical", "backup_repository", "BackupRepository/%s" % repo.url, exc.msg, {"repository": repo.url})
        raise RunbookError(exc.msg, **_with_findings(dict(empty, changed=False, repository=repo.url), [missing]))
    except RunbookError as exc:
        exc.details.setdefault("repository", repo.url)
        raise


def _plural(count: int, word: str) -> str:
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


# --------------------------------------------------------------------------- backup_repo_info

def run_backup_repo_info(task: Task[BackupRepoInfoOptions]) -> Result:
    """Complete and incomplete backups in scope, with freshness findings; changes nothing."""
    opts = task.options
    repo = task.client(Repository.from_options)
    with _failures_keep_the_report(repo, {"backups": [], "incomplete": []}):
        repo.backend.require_exists()
        manifests, incomplete = repo.scan(opts.kind, opts.set, with_uploads=True)
    if opts.backup_id:
        manifests = [m for m in manifests if m["id"] == opts.backup_id]
    findings = freshness_findings(manifests, incomplete, opts.max_age, opts.max_age_text)
    if opts.max_age and opts.kind and opts.set and not opts.backup_id and not manifests:
        # A set asked for by name that has no backup at all is the stalest of all, never "nothing to say".
        findings.append(finding("critical", "backup_freshness", "BackupSet/%s/%s" % (opts.kind, opts.set),
                                "no complete backup, so none within max_age %s" % opts.max_age_text,
                                {"backup_id": None, "age_s": None, "max_age_s": round(opts.max_age)}))
    result = _with_findings({"changed": False, "repository": repo.url, "backups": [backup_summary(m) for m in manifests],
                             "incomplete": public_incomplete(incomplete)}, findings)
    result["msg"] = "%s and %s in %s: status %s" % (
        _plural(len(manifests), "complete backup"), _plural(len(incomplete), "incomplete one"), repo.url, result["status"])
    return result


# --------------------------------------------------------------------------- backup_repo

def _selected(repo: Repository, opts: BackupRepoOptions) -> t.List[Json]:
    if opts.backup_id and opts.kind and opts.set:  # required_by makes kind and set present
        return [repo.get(opts.kind, opts.set, opts.backup_id)]
    manifests = repo.scan(opts.kind, opts.set)[0]
    if not manifests and opts.set:
        # A mistyped set must not verify "nothing" successfully.
        raise RunbookError("no complete %s backup of set %r in %s to verify" % (opts.kind, opts.set, repo.url))
    if opts.latest_only:
        newest: t.Dict[t.Tuple[str, str], Json] = {}
        for manifest in manifests:  # newest first
            newest.setdefault((manifest["kind"], manifest["set"]), manifest)
        manifests = list(newest.values())
    return manifests


def _verified(repo: Repository, manifest: Json, identities: t.Sequence[t.Any], check_mode: bool = False) -> Json:
    details = {"objects": len(manifest.get("objects", [])), "stored_bytes": manifest.get("size", 0)}
    if manifest["kind"] == "evidence" and custody.has_custody(manifest):
        # Evidence: re-prove its chain of custody too, and record this access in it (not in check mode).
        checked = custody.reprove_and_record(repo, manifest, identities, by="backup_repo state=verify",
                                             who=custody.collector(), record=not check_mode)
        details["custody_records"] = checked["records"]
    else:
        checked = repo.verify(manifest, identities)
    if checked["level"] == "decrypt":
        details["raw_bytes"] = manifest.get("raw_size", 0)
    return verified_entry(manifest, checked["level"], checked["problems"], **details)


def verify_backups(task: Task[BackupRepoOptions], repo: Repository) -> Result:
    repo.backend.require_exists()
    verified = [_verified(repo, manifest, task.options.identities, task.check_mode) for manifest in _selected(repo, task.options)]
    findings = [finding("ok" if v["ok"] else "critical", "backup_verify", _ref(v),
                        "verified (%s)" % v["level"] if v["ok"] else "; ".join(v["problems"]), {"level": v["level"]})
                for v in verified]
    if not verified:
        findings.append(finding("warning", "backup_verify", "BackupRepository/%s" % repo.url,
                                "no complete backup in scope to verify", {"kind": task.options.kind}))
    result = _with_findings({"changed": False, "verified": verified}, findings)
    bad = [v for v in verified if not v["ok"]]
    if bad:
        raise RunbookError("%d of %d backups failed verification: %s" % (
            len(bad), len(verified), "; ".join("%s/%s/%s: %s" % (v["kind"], v["set"], v["backup_id"], ", ".join(v["problems"]))
                                               for v in bad)), **result)
    levels = sorted({v["level"] for v in verified})
    result["msg"] = "%s in %s read back intact%s" % (
        _plural(len(verified), "backup"), repo.url, " (%s)" % ", ".join(levels) if levels else "")
    return result


def prune_backups(task: Task[BackupRepoOptions], repo: Repository) -> Result:
    opts = task.options
    if opts.retention is None or policy_is_empty(opts.retention):
        raise RunbookError("state=prune needs a retention policy with at least one keep_* above 0 (or a keep_within)")
    repo.backend.require_exists()
    kept, pruned = repo.prune(opts.retention, opts.kind, opts.set, dry_run=task.check_mode)
    per_set: t.Dict[t.Tuple[str, str], t.List[int]] = {}
    for index, group in enumerate((kept, pruned)):
        for item in group:
            per_set.setdefault((item["kind"], item["set"]), [0, 0])[index] += 1
    verb = "would prune" if task.check_mode else "pruned"
    findings = [finding("ok", "backup_retention", "BackupSet/%s/%s" % key, "kept %d, %s %d" % (counts[0], verb, counts[1]),
                        {"kept": counts[0], "pruned": counts[1]}) for key, counts in sorted(per_set.items())]
    result = _with_findings({"changed": bool(pruned), "pruned": pruned, "kept": kept}, findings)
    result["msg"] = "%s %s and kept %d in %s" % (verb, _plural(len(pruned), "backup"), len(kept), repo.url)
    if task.diff:
        result["diff"] = {"before": {"backups": sorted(b["id"] for b in kept + pruned)},
                          "after": {"backups": sorted(b["id"] for b in kept)}}
    return result


def cleanup_repository(task: Task[BackupRepoOptions], repo: Repository) -> Result:
    opts = task.options
    repo.backend.require_exists()
    cleaned, uploads = repo.cleanup(opts.older_than, opts.kind, opts.set, dry_run=task.check_mode)
    verb = "would remove" if task.check_mode else "removed"
    findings = [finding("info", "backup_cleanup", _ref(item), "%s incomplete backup (%s)" % (verb, item["reason"]),
                        {"prefix": item["prefix"]}) for item in cleaned]
    findings += [finding("info", "backup_cleanup", "BackupUpload/%s" % upload["key"],
                         "%s unfinished upload started %s" % ("would abort" if task.check_mode else "aborted", upload["started"]),
                         dict(upload)) for upload in uploads]
    result = _with_findings({"changed": bool(cleaned or uploads), "cleaned": cleaned, "aborted_uploads": uploads}, findings)
    result["msg"] = "%s %s and %s %s in %s" % (verb, _plural(len(cleaned), "incomplete backup"),
                                               "would abort" if task.check_mode else "aborted",
                                               _plural(len(uploads), "unfinished upload"), repo.url)
    return result


_ACTIONS: t.Dict[str, t.Callable[[Task[BackupRepoOptions], Repository], Result]] = {
    "verify": verify_backups, "prune": prune_backups, "cleanup": cleanup_repository}
# What a failed run of each state still returns (the fields a report reads).
_EMPTY: t.Dict[str, Result] = {
    "verify": {"verified": []}, "prune": {"pruned": [], "kept": []}, "cleanup": {"cleaned": [], "aborted_uploads": []}}


def run_backup_repo(task: Task[BackupRepoOptions]) -> Result:
    repo = task.client(Repository.from_options)
    state = task.options.state
    with _failures_keep_the_report(repo, _EMPTY[state]):
        result = _ACTIONS[state](task, repo)
    result["repository"] = repo.url
    return result
