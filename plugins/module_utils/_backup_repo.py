# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository's own operations (list, verify, prune, cleanup) behind ``backup_repo``."""

from __future__ import annotations

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, Stopwatch
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    Repository, backup_summary, public_incomplete)
from ansible_collections.runbook.ops.plugins.module_utils._retention import policy_is_empty
from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities


def _selected(repo: Repository, params: dict) -> t.List[dict]:
    kind, set_name, backup_id = params.get("kind"), params.get("set"), params.get("backup_id")
    if backup_id:
        if not (kind and set_name):
            raise RunbookError("backup_id needs kind and set too")
        return [repo.get(kind, set_name, backup_id)]
    manifests = repo.scan(kind, set_name)[0]
    return manifests


def list_backups(repo: Repository, params: dict) -> dict:
    manifests, incomplete = repo.scan(params.get("kind"), params.get("set"))
    if params.get("backup_id"):
        manifests = [m for m in manifests if m["id"] == params["backup_id"]]
    return {"changed": False, "backups": [backup_summary(m) for m in manifests],
            "incomplete": public_incomplete(incomplete)}


def verify_backups(repo: Repository, params: dict) -> dict:
    identities = load_identities(params.get("encryption_identity"))
    verified = [repo.verify(manifest, identities) for manifest in _selected(repo, params)]
    result: dict = {"changed": False, "verified": verified}
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
    kept, removed = repo.prune(policy, params.get("kind"), params.get("set"), dry_run=check_mode)
    return {"changed": bool(removed), "removed": removed, "kept": kept,
            "diff": {"before": {"backups": sorted(b["id"] for b in kept + removed)},
                     "after": {"backups": sorted(b["id"] for b in kept)}}}


def cleanup_repository(repo: Repository, params: dict, check_mode: bool) -> dict:
    backups, uploads = repo.cleanup(params["older_than"], params.get("kind"), params.get("set"), dry_run=check_mode)
    return {"changed": bool(backups or uploads), "removed": backups, "aborted_uploads": uploads}


STATES = ("list", "verify", "prune", "cleanup")


def run(module: t.Any) -> dict:
    watch = Stopwatch()
    params = module.params
    if params["state"] not in STATES:
        raise RunbookError("state must be one of %s, got %r" % (", ".join(STATES), params["state"]))
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
