#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_maintenance
short_description: ANALYZE, VACUUM, VACUUM FULL and concurrent REINDEX of the PostgreSQL tables and indexes that need it
version_added: 0.2.0
description:
  - Chooses its targets from the statistics of one database - tables whose dead rows reach O(dead_tuples) percent
    (V(vacuum)), tables whose rows changed by O(analyze_modified) percent since the last analyze or never analyzed
    (V(analyze)), invalid indexes, indexes whose estimated bloat reaches O(bloat), and invalid C(_ccnew)/C(_ccold)
    indexes left by an interrupted C(REINDEX CONCURRENTLY) (V(reindex)) - or takes them from O(tables) and O(indexes).
  - V(vacuum) runs C(VACUUM (SKIP_LOCKED, ANALYZE)); V(analyze) runs C(ANALYZE (SKIP_LOCKED)); V(reindex) runs
    C(REINDEX INDEX CONCURRENTLY) (PostgreSQL 12 or later) and drops leftover indexes with C(DROP INDEX CONCURRENTLY);
    V(vacuum_full) runs C(VACUUM (FULL, SKIP_LOCKED, ANALYZE)) only on the tables listed in O(vacuum_full_tables) whose
    estimated bloat reaches O(bloat), and only with a O(window).
  - Every statement runs on its own in autocommit mode, never inside a transaction block, with O(lock_timeout) and
    O(statement_timeout). A target whose lock is not granted in time (or at once, for C(SKIP_LOCKED)) is skipped and
    reported; nobody waits behind the module longer than O(lock_timeout). A reindex that gives up drops the invalid
    index it left, or the next run does.
  - No new operation starts once the O(window) has closed.
  - Replaces C(ANALYZE; REINDEX DATABASE ...; VACUUM FULL;), which locks every table, and makes the mistake of wrapping
    C(VACUUM) or C(REINDEX CONCURRENTLY) in C(BEGIN ... COMMIT) impossible to express.
author:
  - runbook.ops maintainers (@runbook-ops)
requirements:
  - psycopg (version 3)
extends_documentation_fragment:
  - runbook.ops.postgres
  - runbook.ops.kubernetes_tunnel
attributes:
  check_mode:
    support: full
    description: Returns the plan - every table and index it would touch, the operation and why - and touches nothing.
  diff_mode:
    support: none
    description: The targets and their sizes before and after are in RV(targets); no diff is produced.
options:
  db:
    description: The database to maintain; taken literally, at most 63 bytes.
    type: str
    required: true
    aliases: [login_db]
  operations:
    description: The operations to consider. V(vacuum_full) is opt-in and needs O(vacuum_full_tables) and a O(window).
    type: list
    elements: str
    choices: [analyze, vacuum, vacuum_full, reindex]
    default: [analyze, vacuum, reindex]
  tables:
    description:
      - Tables (C(schema.name) or C(name) in C(public)) to vacuum (or analyze, when V(vacuum) is not among O(operations))
        whatever their statistics say.
    type: list
    elements: str
    default: []
  indexes:
    description: Indexes (C(schema.name) or C(name) in C(public)) to reindex whatever their statistics say.
    type: list
    elements: str
    default: []
  vacuum_full_tables:
    description: The only tables V(vacuum_full) may rewrite (when their estimated bloat reaches O(bloat)).
    type: list
    elements: str
    default: []
  min_table_size:
    description: Tables and indexes smaller than this are not chosen by thresholds (listed ones always are). Bytes or V(10MB).
    type: raw
    default: 10MB
  dead_tuples:
    description: Vacuum a table when its dead rows reach this percent of all its rows.
    type: float
    default: 20
  analyze_modified:
    description: Analyze a table when the rows changed since its last analyze reach this percent of its rows.
    type: float
    default: 10
  bloat:
    description: Estimated bloat (bytes or V(1GB)) from which an index is rebuilt and a listed table rewritten by V(vacuum_full).
    type: raw
    default: 1GB
  lock_timeout:
    description: C(lock_timeout) of every statement (a duration such as V(5s), V(500ms)).
    type: raw
    default: 5s
  statement_timeout:
    description: C(statement_timeout) of every statement; V(0) means none. A statement cut off fails its target.
    type: raw
    default: 1h
  window:
    description: When new operations may start. Without it, there is no limit.
    type: dict
    default: {}
    suboptions:
      not_after:
        description:
          - No operation starts after this time. C(HH:MM) is the next such time of the managed host's clock (C(05:00)
            at 23:00 means tomorrow 05:00); an ISO 8601 timestamp (C(2026-03-01T05:00:00Z)) is taken as is.
        type: str
      max_duration:
        description: No operation starts after this much time from the start of the task (a duration such as V(2h)).
        type: raw
notes:
  - Bloat is an estimate from the ANALYZE statistics (see M(runbook.ops.pg_health)); with missing or stale statistics a
    listed table is not rewritten, and its target says why.
  - A running operation is not interrupted when the window closes; O(statement_timeout) bounds it.
seealso:
  - module: runbook.ops.pg_health
  - module: runbook.ops.pg_purge
"""

EXAMPLES = r"""
- name: Weekly maintenance window, at most until 05:00
  runbook.ops.pg_maintenance:
    login_host: db.example.internal
    login_user: maintenance
    login_password: "{{ vault_pg_maintenance_password }}"
    db: auth_service
    window:
      not_after: "05:00"
  register: maintenance

- name: Show the plan without touching anything
  runbook.ops.pg_maintenance:
    login_host: db.example.internal
    login_user: maintenance
    login_password: "{{ vault_pg_maintenance_password }}"
    db: auth_service
    operations: [analyze, vacuum, vacuum_full, reindex]
    vacuum_full_tables: [public.audit_logs]
    window:
      max_duration: 2h
  check_mode: true

- name: Rebuild one index concurrently, giving up on locks after 2 seconds
  runbook.ops.pg_maintenance:
    login_host: db.example.internal
    login_user: maintenance
    login_password: "{{ vault_pg_maintenance_password }}"
    db: auth_service
    operations: [reindex]
    indexes: [public.sessions_token_idx]
    lock_timeout: 2s
"""

RETURN = r"""
changed:
  description: True when an operation ran (in check mode, when one would run).
  returned: always
  type: bool
msg:
  description: What ran and what was skipped and why (in check mode, the plan).
  returned: always
  type: str
  sample: "ran 3 operation(s) on database auth_service, skipped 1; skipped: vacuum_full public.audit_logs (the window closed ...)"
targets:
  description: Every table and index chosen, in the order they ran (or would run).
  returned: always
  type: list
  elements: dict
  contains:
    operation:
      description: V(analyze), V(vacuum), V(vacuum_full), V(reindex) or V(drop_leftover) (an invalid C(_ccnew)/C(_ccold) index dropped).
      type: str
    object:
      description: The table or index, C(schema.name).
      type: str
    table:
      description: For an index, its table (C(schema.name)); null for a table.
      type: str
    reason:
      description: Why it was chosen (the measure and its threshold, or the list it was given in).
      type: str
    status:
      description: V(planned) (check mode), V(done), V(skipped) or V(failed).
      type: str
    skipped_because:
      description: Why it was skipped or failed (lock not granted, window closed, bloat below the threshold...); null otherwise.
      type: str
    duration_s:
      description: Seconds the operation took (0 when it did not run).
      type: float
    size_before:
      description: Bytes before the operation (the table with its indexes and TOAST, or the index); null when it did not run.
      type: int
    size_after:
      description: Bytes after the operation; null when it did not run.
      type: int
done:
  description: The number of operations that ran.
  returned: always
  type: int
skipped:
  description: The number of targets skipped.
  returned: always
  type: int
failed:
  description: The number of operations that failed (the task then fails, keeping every field).
  returned: always
  type: int
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import tunnel_kubeconfig_secrets
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import postgres_connection_argspec
from ansible_collections.runbook.ops.plugins.module_utils._pg_maintenance import (
    OPERATIONS, PgMaintenanceOptions, run_pg_maintenance)


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = postgres_connection_argspec()
    spec.update(
        db=dict(type="str", required=True, aliases=["login_db"]),
        operations=dict(type="list", elements="str", choices=list(OPERATIONS), default=["analyze", "vacuum", "reindex"]),
        tables=dict(type="list", elements="str", default=[]),
        indexes=dict(type="list", elements="str", default=[]),
        vacuum_full_tables=dict(type="list", elements="str", default=[]),
        min_table_size=dict(type="raw", default="10MB"),
        dead_tuples=dict(type="float", default=20),
        analyze_modified=dict(type="float", default=10),
        bloat=dict(type="raw", default="1GB"),
        lock_timeout=dict(type="raw", default="5s"),
        statement_timeout=dict(type="raw", default="1h"),
        window=dict(type="dict", default={}, apply_defaults=True, options=dict(
            not_after=dict(type="str"),
            max_duration=dict(type="raw"),
        )),
    )
    return dict(argument_spec=spec, supports_check_mode=True, sensitive=[tunnel_kubeconfig_secrets])


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, PgMaintenanceOptions.from_params, run_pg_maintenance)


if __name__ == "__main__":
    main()
