# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every backup-taking module shares: options (:class:`BackupJobOptions`), ``max_age``
idempotence, retention after success only, and the common result fields."""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, options_from, parse_duration, parse_time, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._names import int_in
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    Repository, backup_summary, encryption_identity_argspec, repository_argspec)
from ansible_collections.runbook.ops.plugins.module_utils._retention import RETENTION_KEYS, check_policy, policy_is_empty
from ansible_collections.runbook.ops.plugins.module_utils._stream import COMPRESSIONS

UNENCRYPTED_WARNING = ("encryption_recipients is empty: the backup is stored unencrypted; "
                       "anyone who can read the repository can read the data")


def retention_argspec() -> t.Dict[str, t.Any]:
    return dict(retention=dict(type="dict", options={key: dict(type=kind) for key, kind in RETENTION_KEYS.items()}))


def backup_job_argspec() -> t.Dict[str, t.Any]:
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
    algorithm = params["compression"]
    if params["compression_level"] is not None and algorithm in COMPRESSION_LEVELS:
        low, high = COMPRESSION_LEVELS[algorithm]
        int_in("compression_level", params["compression_level"], low, high, "for %s" % algorithm)
    int_in("compression_threads", params["compression_threads"], 0, MAX_COMPRESSION_THREADS, "0 uses every core")


@dataclasses.dataclass(frozen=True)
class BackupJobOptions:
    """The options of :func:`backup_job_argspec` that a backup flow reads (the repository and
    identity options are read by ``Repository.from_options`` and ``load_identities``)."""

    set: t.Optional[str]
    labels: t.Dict[str, t.Any]
    max_age: t.Optional[float]
    compression: str
    compression_level: t.Optional[int]
    compression_threads: int
    encryption_recipients: t.List[str]
    retention: t.Optional[t.Dict[str, t.Any]]

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "BackupJobOptions":
        check_compression(params)
        check_policy(params.get("retention"))
        return options_from(cls, params, max_age=parse_duration(params.get("max_age"), "max_age"))

    @property
    def compression_settings(self) -> t.Dict[str, t.Any]:
        return {"algorithm": self.compression, "level": self.compression_level, "threads": self.compression_threads}


def fresh_backup(repo: Repository, kind: str, set_name: str, max_age: t.Union[str, float, None],
                 now: t.Optional[datetime.datetime] = None) -> t.Optional[t.Dict[str, t.Any]]:
    """The newest complete backup younger than ``max_age``, if any (then the job does nothing)."""
    seconds = parse_duration(max_age, "max_age")
    if not seconds:
        return None
    latest = repo.latest(kind, set_name)
    if latest is None:
        return None
    age = ((now or utcnow()) - parse_time(latest.get("finished") or latest["created"], "finished")).total_seconds()
    return latest if age < seconds else None


def prune_after_success(repo: Repository, kind: str, set_name: str, policy: t.Optional[t.Mapping[str, t.Any]],
                        dry_run: bool = False) -> t.List[t.Dict[str, t.Any]]:
    """Retention for one set; call it only once the new backup is committed."""
    if policy is None or policy_is_empty(policy):
        return []
    _kept, removed = repo.prune(policy, kind, set_name, dry_run=dry_run)
    return removed


def throughput_mib_s(raw_bytes: int, seconds: float) -> float:
    return round(raw_bytes / 1048576.0 / seconds, 1) if seconds > 0 else 0.0


def backup_result(manifest: t.Optional[t.Mapping[str, t.Any]], duration_s: float, skipped: bool = False,
                  pruned: t.Optional[t.List[t.Dict[str, t.Any]]] = None) -> Result:
    """The result fields every backup module returns. ``skipped`` is there only when true: Ansible
    shows such a task as skipped, and leaves a task's ``changed_when`` and ``failed_when`` unevaluated
    whenever its result holds the key at all."""
    result: Result = {
        "changed": not skipped,
        "backup_id": manifest["id"] if manifest else None,
        "manifest": manifest,
        "backup": backup_summary(manifest) if manifest else None,
        "pruned": pruned or [],
        "duration_s": round(duration_s, 3),
        "throughput_mib_s": throughput_mib_s(manifest.get("raw_size", 0), duration_s) if manifest and not skipped else 0.0,
    }
    if skipped:
        result["skipped"] = True
    return result


def verified_entry(manifest: t.Mapping[str, t.Any], level: str, problems: t.Sequence[str] = (),
                   **details: t.Any) -> t.Dict[str, t.Any]:
    """One entry of the ``verified`` list every module returns: which backup, at which level, whether
    it passed, what is wrong (each problem names the object), and the level's own facts."""
    return {
        "backup_id": manifest.get("id"),
        "kind": manifest.get("kind"),
        "set": manifest.get("set"),
        "level": level,
        "ok": not problems,
        "problems": list(problems),
        "details": details,
    }
