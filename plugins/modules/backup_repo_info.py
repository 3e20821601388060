#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_repo_info
short_description: List the backups in the runbook.ops backup repository and check their freshness
version_added: 0.1.0
description:
  - Lists the complete and incomplete backups in the repository that M(runbook.ops.pg_backup),
    M(runbook.ops.redis_snapshot) and the incident evidence capture write to, on a local directory or any S3 API.
  - A backup exists only once its C(manifest.json) is written; prefixes without one, and S3 multipart uploads
    that never finished (a backup killed mid-upload), are reported under RV(incomplete) and never under RV(backups).
  - Judges the repository as findings, so a daily check notices backups that silently stopped
    (O(max_age)) and crashed backups left behind.
  - Reads only; it never changes the repository. To verify, prune or clean up, use M(runbook.ops.backup_repo).
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.repository
attributes:
  check_mode:
    support: full
    description: The module only reads, so check mode runs it unchanged.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
options:
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
  max_age:
    description:
      - A set whose newest complete backup started longer ago than this (V(26h), V(8d)...) gets a
        V(critical) C(backup_freshness) finding; without it every set with a backup is V(ok).
      - With O(kind) and O(set), a set that has no complete backup at all gets a V(critical)
        C(backup_freshness) finding too.
    type: str
notes:
  - Requires C(boto3) for S3 repositories.
  - A repository that does not exist (no directory, no bucket) fails the task, with a V(critical)
    C(backup_repository) finding kept in the failed result.
seealso:
  - module: runbook.ops.backup_repo
  - module: runbook.ops.pg_backup
  - module: runbook.ops.redis_snapshot
"""

EXAMPLES = r"""
- name: List every complete and incomplete backup in an S3 repository
  runbook.ops.backup_repo_info:
    repository: s3://platform-backups/runbook
    region: eu-west-1
  register: repo

- name: Show the newest PostgreSQL backup of the auth database
  ansible.builtin.debug:
    msg: "{{ (repo.backups | selectattr('set', 'equalto', 'auth_service') | first).id }}"

- name: Fail the daily check when a set has no backup younger than 26 hours
  runbook.ops.backup_repo_info:
    repository: s3://platform-backups/runbook
    max_age: 26h
  register: freshness
  failed_when: freshness.status | runbook.ops.severity_at_least('critical')
"""

RETURN = r"""
changed:
  description: Always V(false); the module only reads.
  returned: always
  type: bool
  sample: false
msg:
  description: What was found, for a human; on failure, what failed.
  returned: always
  type: str
  sample: "12 complete backups and 1 incomplete one in s3://platform-backups/runbook: status warning"
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.412
repository:
  description: The repository URL read.
  returned: always
  type: str
  sample: s3://platform-backups/runbook
backups:
  description: Complete backups in scope, newest first (empty when the repository does not exist).
  returned: always
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
  description: Backups without a manifest (never finished) and unfinished uploads; they are not used for anything.
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: The kind from the path.
      type: str
      sample: redis
    set:
      description: The set from the path.
      type: str
      sample: cache
    backup_id:
      description: The backup id from the path.
      type: str
      sample: 20260101T000000.000Z-dead01
    reason:
      description: Why it is incomplete.
      type: str
      sample: no manifest
    prefix:
      description: Where its objects are.
      type: str
      sample: file:///var/backups/runbook/redis/cache/20260101T000000.000Z-dead01/
    objects:
      description: Names of the objects found.
      type: list
      elements: str
      sample: [data]
    stored_size:
      description: Bytes stored under the prefix.
      type: int
      sample: 15
    modified:
      description: When an object under it was last written.
      type: str
      sample: "2026-01-01T00:00:00Z"
findings:
  description:
    - The result as findings (the schema every runbook.ops health-style module returns).
    - One per set (V(backup_freshness), V(critical) when older than O(max_age), else V(ok)) and one
      V(warning) per incomplete backup (V(backup_incomplete)).
    - One V(warning) per partial backup, whose manifest lists kinds that could not be read (V(backup_partial)).
    - When the repository does not exist, one V(critical) V(backup_repository) finding (and the task fails).
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
      sample: backup_freshness
    object:
      description: What it is about.
      type: str
      sample: BackupSet/postgresql/auth_service
    message:
      description: What was found, for a human.
      type: str
      sample: latest complete backup was taken 30.2 h ago, above max_age 26h
    details:
      description:
        - Machine-readable facts behind the message. A C(backup_freshness) finding holds C(backup_id),
          C(age_s) (seconds since the newest backup started; null when the set has none) and C(created),
          and C(max_age_s) when O(max_age) is set.
      type: dict
      sample: {backup_id: 20261124T031500.042Z-3fa91c, age_s: 108720, created: "2026-11-24T03:15:00Z", max_age_s: 93600}
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

from ansible_collections.runbook.ops.plugins.module_utils._backup_repo import BackupRepoInfoOptions, run_backup_repo_info
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._repository import KINDS, repository_argspec


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    argument_spec = repository_argspec()
    argument_spec.update(
        kind=dict(type="str", choices=list(KINDS)),
        set=dict(type="str"),
        backup_id=dict(type="str"),
        max_age=dict(type="str"),
    )
    return dict(
        argument_spec=argument_spec,
        required_by={"set": "kind", "backup_id": ("kind", "set")},
        supports_check_mode=True,
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, BackupRepoInfoOptions.from_params, run_backup_repo_info)


if __name__ == "__main__":
    main()
