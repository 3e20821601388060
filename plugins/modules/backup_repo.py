#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_repo
short_description: List, verify, prune and clean up the runbook.ops backup repository
version_added: 0.1.0
description:
  - Works on the repository that M(runbook.ops.pg_backup), M(runbook.ops.redis_snapshot) and the incident
    evidence capture write to, on a local directory or any S3 API.
  - A backup exists only once its C(manifest.json) is written; prefixes without one are reported as
    incomplete and never listed, restored or counted by retention.
  - V(verify) re-reads every object and compares its size and sha256 with the manifest; with
    O(encryption_identity) it also proves that the data decrypts and decompresses to the end.
  - V(list) also reports, as incomplete, S3 multipart uploads that never finished (a backup killed mid-upload).
  - V(prune) applies a retention policy per set with restic C(forget) meaning and never removes the
    newest complete backup of a set. V(cleanup) removes incomplete backups and aborts unfinished S3
    multipart uploads older than O(older_than).
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
      - What to do, one of V(list), V(verify), V(prune) or V(cleanup).
      - V(list) reports complete backups (RV(backups)) and incomplete ones (RV(incomplete)) and changes nothing.
      - V(verify) re-reads every selected backup; the task fails when one of them has a problem.
      - V(prune) applies O(retention); V(cleanup) removes incomplete backups and aborts stale uploads.
    type: str
    default: list
  kind:
    description: Only backups of this kind.
    type: str
    choices: [postgresql, redis, kubernetes, evidence]
  set:
    description: Only backups of this set (needs O(kind)).
    type: str
  backup_id:
    description:
      - Only this backup (needs O(kind) and O(set)).
      - A backup id as the repository writes them (letters, digits, dots, underscores, colons, plus and minus signs); anything else is refused.
    type: str
  max_age:
    description:
      - For O(state=list), a set whose newest complete backup started longer ago than this (V(26h), V(8d)...)
        gets a V(critical) finding, so a daily check notices backups that silently stopped.
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
seealso:
  - module: runbook.ops.pg_backup
  - module: runbook.ops.redis_snapshot
"""

EXAMPLES = r"""
- name: List every complete and incomplete backup in an S3 repository
  runbook.ops.backup_repo:
    repository: s3://platform-backups/runbook
    region: eu-west-1
  register: repo

- name: Fail the daily check when a set has no backup younger than 26 hours
  runbook.ops.backup_repo:
    repository: s3://platform-backups/runbook
    max_age: 26h
  register: backups
  failed_when: backups.status == 'critical'

- name: Prove that the latest PostgreSQL backups decrypt to the end
  runbook.ops.backup_repo:
    repository: file:///var/backups/runbook
    state: verify
    kind: postgresql
    set: auth_service
    encryption_identity: "{{ lookup('ansible.builtin.file', '/etc/runbook/backup-identity.txt') }}"

- name: Keep 7 daily, 4 weekly and 6 monthly backups of every set
  runbook.ops.backup_repo:
    repository: s3://platform-backups/runbook
    state: prune
    retention:
      keep_daily: 7
      keep_weekly: 4
      keep_monthly: 6

- name: Remove backups that never finished and abort stale multipart uploads
  runbook.ops.backup_repo:
    repository: s3://platform-backups/runbook
    s3_endpoint_url: https://minio.internal:9000
    s3_checksum: when_required
    state: cleanup
    older_than: 12h
"""

RETURN = r"""
repository:
  description: The repository URL worked on.
  returned: always
  type: str
  sample: s3://platform-backups/runbook
backups:
  description: Complete backups, newest first.
  returned: when O(state=list)
  type: list
  elements: dict
  contains:
    id:
      description: The backup id (UTC timestamp and a random suffix; sorts by time).
      type: str
      sample: 20261124T031500.042Z-3fa91c
    kind:
      description: What was backed up.
      type: str
      sample: postgresql
    set:
      description: The backup set.
      type: str
      sample: auth_service
    created:
      description: When the backup started (UTC, ISO 8601).
      type: str
      sample: "2026-11-24T03:15:00Z"
    finished:
      description: When the backup was committed (UTC, ISO 8601).
      type: str
      sample: "2026-11-24T03:15:07Z"
    size:
      description: Bytes before compression and encryption.
      type: int
      sample: 851443712
    stored_size:
      description: Bytes as stored.
      type: int
      sample: 208123904
    encrypted:
      description: Whether the objects are age-encrypted.
      type: bool
      sample: true
    compression:
      description: The compression algorithm.
      type: str
      sample: zstd
    labels:
      description: The labels given when the backup was taken.
      type: dict
      sample: {env: prod}
incomplete:
  description: Backups without a manifest (never finished); they are not used for anything.
  returned: when O(state=list)
  type: list
  elements: dict
  contains:
    kind:
      description: The kind from the path.
      type: str
    set:
      description: The set from the path.
      type: str
    backup_id:
      description: The backup id from the path.
      type: str
    reason:
      description: Why it is incomplete.
      type: str
      sample: no manifest
    prefix:
      description: Where its objects are.
      type: str
    objects:
      description: Names of the objects found.
      type: list
      elements: str
    stored_size:
      description: Bytes stored under the prefix.
      type: int
    modified:
      description: When an object under it was last written.
      type: str
verified:
  description: One entry per backup verified.
  returned: when O(state=verify)
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup id.
      type: str
    kind:
      description: The kind.
      type: str
    set:
      description: The set.
      type: str
    level:
      description: V(checksum) (stored bytes only) or V(decrypt) (read to the end through decryption and decompression).
      type: str
    ok:
      description: True when no problem was found.
      type: bool
    problems:
      description: What is wrong, each naming the object.
      type: list
      elements: str
      sample: ["data.dump.zst.age: sha256 3a... differs from the manifest's 9c..."]
removed:
  description:
    - For O(state=prune), the backups removed (in check mode, that would be removed), as in RV(backups).
    - For O(state=cleanup), the incomplete backups removed, as in RV(incomplete).
  returned: when O(state=prune) or O(state=cleanup)
  type: list
  elements: dict
kept:
  description: For O(state=prune), the backups kept, as in RV(backups), each with C(reasons) (the rules that kept it).
  returned: when O(state=prune)
  type: list
  elements: dict
aborted_uploads:
  description: Unfinished multipart uploads aborted (S3) or partial files removed (file repositories).
  returned: when O(state=cleanup)
  type: list
  elements: dict
  contains:
    key:
      description: The object the upload was for.
      type: str
    started:
      description: When the upload started.
      type: str
findings:
  description:
    - The result as findings (the schema every runbook.ops health-style module returns).
    - For O(state=list), one per set (V(backup_freshness), V(critical) when older than O(max_age)) and one
      V(warning) per incomplete backup; for O(state=verify), one per backup verified (V(critical) on a problem).
  returned: when O(state=list) or O(state=verify)
  type: list
  elements: dict
  contains:
    severity:
      description: One of V(ok), V(info), V(warning), V(unknown), V(critical).
      type: str
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
    details:
      description: Machine-readable facts behind the message.
      type: dict
status:
  description: The worst severity among RV(findings).
  returned: when O(state=list) or O(state=verify)
  type: str
  sample: ok
summary:
  description: How many findings of each severity.
  returned: when O(state=list) or O(state=verify)
  type: dict
  sample: {ok: 3, info: 0, warning: 1, unknown: 0, critical: 0}
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import retention_argspec
from ansible_collections.runbook.ops.plugins.module_utils._backup_repo import run
from ansible_collections.runbook.ops.plugins.module_utils._common import run_module
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    KINDS, encryption_identity_argspec, repository_argspec)


def main() -> None:
    argument_spec = repository_argspec()
    argument_spec.update(encryption_identity_argspec())
    argument_spec.update(retention_argspec())
    argument_spec.update(
        # The accepted values are checked by the module (run() in _backup_repo): "list" is the
        # contract of this module, and Ansible's argument-spec linting reserves that word.
        state=dict(type="str", default="list"),
        kind=dict(type="str", choices=list(KINDS)),
        set=dict(type="str"),
        backup_id=dict(type="str"),
        older_than=dict(type="str", default="24h"),
        max_age=dict(type="str"),
        latest_only=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_by={"set": "kind", "backup_id": ("kind", "set")})
    run_module(module, run)


if __name__ == "__main__":
    main()
