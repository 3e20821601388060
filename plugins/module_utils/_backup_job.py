# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every backup-taking module shares: options, ``max_age`` idempotence, retention after
success only, and the common result fields."""

from __future__ import annotations

import datetime
import typing as t
import warnings

from ansible_collections.runbook.ops.plugins.module_utils._common import parse_duration, parse_time, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._names import int_in
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    Repository, backup_summary, encryption_identity_argspec, repository_argspec)
from ansible_collections.runbook.ops.plugins.module_utils._retention import RETENTION_KEYS, policy_is_empty
from ansible_collections.runbook.ops.plugins.module_utils._stream import COMPRESSIONS

UNENCRYPTED_WARNING = ("encryption_recipients is empty: the backup is stored unencrypted; "
                       "anyone who can read the repository can read the data")


def retention_argspec() -> dict:
    return dict(retention=dict(type="dict", options={key: dict(type="int") for key in RETENTION_KEYS}))


def backup_job_argspec() -> dict:
    """Repository, encryption, compression, set/labels, max_age and retention options."""
    spec = repository_argspec()
    spec.update(encryption_identity_argspec())
    spec.update(retention_argspec())
    spec.update(
        set=dict(type="str"),
        labels=dict(type="dict", default={}),
        max_age=dict(type="str"),
        compression=dict(type="str", choices=list(COMPRESSIONS), default="zstd"),
        compression_level=dict(type="int"),
        compression_threads=dict(type="int", default=0),
        encryption_recipients=dict(type="list", elements="str", default=[]),
    )
    return spec


# zstd and gzip accept these levels; more threads than this is a typo, not a machine.
COMPRESSION_LEVELS = {"zstd": (1, 22), "gzip": (1, 9)}
MAX_COMPRESSION_THREADS = 256


def check_compression(params: t.Mapping[str, t.Any]) -> None:
    """``compression_level`` and ``compression_threads`` within what the compressor accepts, checked
    before a backup starts (a bad level must not fail after the source was read)."""
    algorithm = params.get("compression") or "zstd"
    if params.get("compression_level") is not None and algorithm in COMPRESSION_LEVELS:
        low, high = COMPRESSION_LEVELS[algorithm]
        int_in("compression_level", params["compression_level"], low, high, "for %s" % algorithm)
    if params.get("compression_threads") is not None:
        int_in("compression_threads", params["compression_threads"], 0, MAX_COMPRESSION_THREADS, "0 uses every core")


def compression_settings(params: dict) -> dict:
    return {"algorithm": params["compression"], "level": params.get("compression_level"),
            "threads": params.get("compression_threads") or 0}


def fresh_backup(repo: Repository, kind: str, set_name: str, max_age: t.Optional[str],
                 now: t.Optional[datetime.datetime] = None) -> t.Optional[dict]:
    """The newest complete backup younger than ``max_age``, if any (then the job does nothing)."""
    seconds = parse_duration(max_age, "max_age")
    if not seconds:
        return None
    latest = repo.latest(kind, set_name)
    if latest is None:
        return None
    age = ((now or utcnow()) - parse_time(latest.get("finished") or latest["created"], "finished")).total_seconds()
    return latest if age < seconds else None


def prune_after_success(repo: Repository, kind: str, set_name: str, policy: t.Optional[dict],
                        dry_run: bool = False) -> t.List[dict]:
    """Retention for one set; call it only once the new backup is committed."""
    if policy_is_empty(policy):
        return []
    _kept, removed = repo.prune(policy, kind, set_name, dry_run=dry_run)
    return removed


def throughput_mib_s(raw_bytes: int, seconds: float) -> float:
    return round(raw_bytes / 1048576.0 / seconds, 1) if seconds > 0 else 0.0


def backup_result(manifest: t.Optional[dict], duration_s: float, skipped: bool = False,
                  pruned: t.Optional[t.List[dict]] = None) -> dict:
    """The result fields every backup module returns."""
    return {
        "changed": not skipped,
        "skipped": skipped,
        "backup_id": manifest["id"] if manifest else None,
        "manifest": manifest,
        "backup": backup_summary(manifest) if manifest else None,
        "pruned": pruned or [],
        "duration_s": round(duration_s, 3),
        "throughput_mib_s": throughput_mib_s(manifest.get("raw_size", 0), duration_s) if manifest and not skipped else 0.0,
    }


def silence_library_warnings() -> None:
    """Library deprecation chatter (boto3's Python support notices) is not ours to show users."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
