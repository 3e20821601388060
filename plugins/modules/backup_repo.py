#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_repo
short_description: Verify, prune and clean up the runbook.ops backup repository
version_added: 0.1.0
description:
  - Works on the repository that M(runbook.ops.pg_backup), M(runbook.ops.redis_snapshot) and the incident
    evidence capture write to, on a local directory or any S3 API. To list what it holds and check that
    backups are fresh, use M(runbook.ops.backup_repo_info).
  - A backup exists only once its C(manifest.json) is written; prefixes without one are incomplete and
    never restored, verified or counted by retention.
  - V(verify) re-reads every object and compares its size and sha256 with the manifest; with
    O(encryption_identity) it also proves that the data decrypts and decompresses to the end.
  - For backups of kind C(evidence), V(verify) also re-proves their chain of custody (see
    M(runbook.ops.k8s_evidence)) and appends a C(verified) record to their C(custody.jsonl) (not in check mode).
  - V(prune) applies a retention policy per set with restic C(forget) meaning and never removes the
    newest complete backup of a set. V(cleanup) removes incomplete backups and aborts unfinished S3
    multipart uploads older than O(older_than).
  - Every result judges the repository as findings (RV(status), RV(summary), RV(findings)), also when the
    task fails, so a report that ignores the failure (C(failed_when=false)) still shows what went wrong.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.repository
  - runbook.ops.repository.ENCRYPTION_IDENTITY
  - runbook.ops.repository.RETENTION
attributes:
  check_mode:
    support: full
    description: V(prune) and V(cleanup) report what they would remove and remove nothing.
  diff_mode:
    support: partial
    description: V(prune) shows the backup ids before and after.
options:
  state:
    description:
      - What to do.
      - V(verify) re-reads every selected backup; the task fails when one of them has a problem.
      - V(prune) applies O(retention) to each set in scope.
      - V(cleanup) removes incomplete backups and aborts stale uploads.
      - Listing moved to M(runbook.ops.backup_repo_info).
    type: str
    required: true
    choices: [verify, prune, cleanup]
  kind:
    description: Only backups of this kind.
    type: str
    choices: [postgresql, redis, kubernetes, evidence, drill]
  set:
    description: Only backups of this set (needs O(kind)).
    type: str
  backup_id:
    description:
      - Only this backup (needs O(kind) and O(set)).
      - A backup id as the repository writes them (letters, digits, dots, underscores, colons, plus and minus signs); anything else is refused.
    type: str
  latest_only:
    description: For O(state=verify), verify only the newest complete backup of each set in scope.
    type: bool
    default: false
  older_than:
    description:
      - For O(state=cleanup), only incomplete backups and unfinished uploads older than this (V(24h), V(30m)...),
        so that a backup running right now is left alone. V(0) removes all of them.
    type: str
    default: 24h
notes:
  - Requires C(boto3) for S3 repositories and C(pyrage) and C(zstandard) to verify encrypted backups.
  - O(retention) is required with O(state=prune).
seealso:
  - module: runbook.ops.backup_repo_info
  - module: runbook.ops.pg_backup
  - module: runbook.ops.redis_snapshot
"""

EXAMPLES = r"""
- name: Prove that the latest PostgreSQL backups decrypt to the end
  runbook.ops.backup_repo:
    repository: file:///var/backups/runbook
    state: verify
    kind: postgresql
    set: auth_service
    latest_only: true
    encryption_identity: "{{ lookup('ansible.builtin.file', '/etc/runbook/backup-identity.txt') }}"

- name: Keep 7 daily, 4 weekly, 12 monthly and 7 yearly backups of every set
  runbook.ops.backup_repo:
    repository: s3://platform-backups/runbook
    state: prune
    retention:
      keep_daily: 7
      keep_weekly: 4
      keep_monthly: 12
      keep_yearly: 7

- name: Keep everything taken in the 30 days before the newest backup of each set
  runbook.ops.backup_repo:
    repository: s3://platform-backups/runbook
    state: prune
    retention:
      keep_within: 30d

- name: Remove backups that never finished and abort stale multipart uploads
  runbook.ops.backup_repo:
    repository: s3://platform-backups/runbook
    s3_endpoint_url: https://minio.internal:9000
    s3_checksum: when_required
    state: cleanup
    older_than: 12h
"""

RETURN = r"""
changed:
  description: Whether backups were (or, in check mode, would be) removed or uploads aborted. Always V(false) for O(state=verify).
  returned: always
  type: bool
  sample: true
msg:
  description: What was done, for a human; on failure, what failed.
  returned: always
  type: str
  sample: pruned 4 backups and kept 9 in s3://platform-backups/runbook
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 2.481
repository:
  description: The repository URL worked on.
  returned: always
  type: str
  sample: s3://platform-backups/runbook
verified:
  description: One entry per backup verified (empty when nothing was in scope); kept in the failed result.
  returned: when O(state=verify)
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup id.
      type: str
      sample: 20261124T031500.042Z-3fa91c
    kind:
      description: The kind.
      type: str
      sample: postgresql
    set:
      description: The set.
      type: str
      sample: auth_service
    level:
      description: V(checksum) (stored bytes only) or V(decrypt) (read to the end through decryption and decompression).
      type: str
      sample: decrypt
    ok:
      description: True when no problem was found.
      type: bool
      sample: true
    problems:
      description: What is wrong, each naming the object.
      type: list
      elements: str
      sample: ["data.dump.zst.age: sha256 3a... differs from the manifest's 9c..."]
    details:
      description:
        - Facts of the check, C(objects) (objects read) and C(stored_bytes) (bytes read as stored);
          at level V(decrypt) also C(raw_bytes) (the plain size the manifest records).
        - For evidence, also C(custody_records) (the records of its custody log, this access included).
      type: dict
      sample: {objects: 1, stored_bytes: 208123904, raw_bytes: 851443712}
pruned:
  description:
    - The backups retention removed (in check mode, would remove), each as M(runbook.ops.backup_repo_info) lists
      them (C(id), C(kind), C(set), C(created), C(finished), C(size), C(stored_size), C(encrypted), C(compression), C(labels)).
  returned: when O(state=prune)
  type: list
  elements: dict
  sample: [{id: 20261001T031500.042Z-3fa91c, kind: postgresql, set: auth_service, created: "2026-10-01T03:15:00Z"}]
kept:
  description: The backups kept, as in RV(pruned), each with C(reasons) (the rules that kept it, e.g. V(daily), V(within), V(newest)).
  returned: when O(state=prune)
  type: list
  elements: dict
  sample: [{id: 20261124T031500.042Z-3fa91c, kind: postgresql, set: auth_service, reasons: [last, daily]}]
cleaned:
  description:
    - The incomplete backups removed (in check mode, that would be removed), as M(runbook.ops.backup_repo_info)
      lists them under C(incomplete) (C(kind), C(set), C(backup_id), C(reason), C(prefix), C(objects), C(stored_size), C(modified)).
  returned: when O(state=cleanup)
  type: list
  elements: dict
  sample: [{kind: redis, set: cache, backup_id: 20260101T000000.000Z-dead01, reason: no manifest}]
aborted_uploads:
  description: Unfinished multipart uploads aborted (S3) or partial files removed (file repositories).
  returned: when O(state=cleanup)
  type: list
  elements: dict
  contains:
    key:
      description: The object the upload was for.
      type: str
      sample: s3://platform-backups/runbook/postgresql/auth_service/20261124T031500.042Z-3fa91c/data
    started:
      description: When the upload started.
      type: str
      sample: "2026-11-24T03:15:00Z"
findings:
  description:
    - The result as findings (the schema every runbook.ops health-style module returns).
    - For O(state=verify), one per backup verified (V(backup_verify), V(critical) on a problem, V(warning) when
      nothing was in scope); for O(state=prune), one V(ok) per set (V(backup_retention)); for O(state=cleanup),
      one V(info) per backup removed or upload aborted (V(backup_cleanup)).
    - When the repository does not exist the task fails with one V(critical) V(backup_repository) finding.
  returned: always
  type: list
  elements: dict
  contains:
    severity:
      description: One of V(ok), V(info), V(warning), V(unknown), V(critical).
      type: str
      sample: critical
    check:
      description: Which check produced it.
      type: str
      sample: backup_verify
    object:
      description: What it is about.
      type: str
      sample: Backup/postgresql/auth_service/20261124T031500.042Z-3fa91c
    message:
      description: What was found, for a human.
      type: str
      sample: verified (decrypt)
    details:
      description: Machine-readable facts behind the message.
      type: dict
      sample: {level: decrypt}
status:
  description: The worst severity among RV(findings).
  returned: always
  type: str
  sample: ok
summary:
  description: How many findings of each severity.
  returned: always
  type: dict
  sample: {ok: 3, info: 0, warning: 1, unknown: 0, critical: 0}
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import retention_argspec
from ansible_collections.runbook.ops.plugins.module_utils._backup_repo import STATES, BackupRepoOptions, run_backup_repo
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    KINDS, encryption_identity_argspec, repository_argspec)


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    argument_spec = repository_argspec()
    argument_spec.update(encryption_identity_argspec())
    argument_spec.update(retention_argspec())
    argument_spec.update(
        state=dict(type="str", required=True, choices=list(STATES)),
        kind=dict(type="str", choices=list(KINDS)),
        set=dict(type="str"),
        backup_id=dict(type="str"),
        older_than=dict(type="str", default="24h"),
        latest_only=dict(type="bool", default=False),
    )
    return dict(
        argument_spec=argument_spec,
        required_by={"set": "kind", "backup_id": ("kind", "set")},
        required_if=[("state", "prune", ("retention",))],
        supports_check_mode=True,
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, BackupRepoOptions.from_params, run_backup_repo)


if __name__ == "__main__":
    main()
