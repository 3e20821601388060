#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_purge
short_description: Delete expired rows of a PostgreSQL table in bounded batches, or drop whole expired partitions
version_added: 0.2.0
description:
  - Deletes the rows of one table that match O(older_than) on O(column), or a O(where) predicate with bound
    O(parameters), in batches of O(batch_size) rows, or sized to take about O(batch_duration) each. Each batch is its own short transaction with a
    O(lock_timeout). Batches walk the rows in the order of O(key), ties broken by the one-column primary key (else
    C(ctid)). A probe through the index finds the key of the batch's last row, then one C(DELETE) removes the matching
    rows between the previous batch's position and that one (both bounds are index conditions on O(key), and the
    predicate is judged again on rows changed meanwhile). The next batch starts after that position, so no batch scans
    the table or walks over the rows already deleted, and rows sharing a key across a batch boundary are neither
    missed nor deleted twice.
  - A predicate that no index serves is refused (every batch would scan the table) unless O(allow_seq_scan); the
    check is the planner's own plan for the batch's probe with sequential scans disabled.
  - When the table is range-partitioned on O(column) alone, each partition whose upper bound is at or before the cut
    is detached and dropped (one short transaction each, under O(lock_timeout)) instead of deleted row by row; the
    rows of the other partitions are deleted in batches.
  - Safety limits. O(max_rows) refuses a run that matches more rows (partitions included) and deletes nothing.
    O(max_duration) starts no batch after that time. O(max_replication_lag) pauses while any replica has more WAL
    than that to replay, and stops the run when it is still behind after O(lag_wait).
  - A killed run leaves only whole batches done (each batch commits or not at all); the next run continues with what
    still matches.
  - This replaces a single C(DELETE ... WHERE created_at < now() - interval '90 days'), which holds every row lock to the
    end, bloats the table at once and floods the replicas with one huge transaction.
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
    description: Counts the rows (and lists the partitions) it would remove, checks the index and O(max_rows); deletes nothing.
  diff_mode:
    support: none
    description: Row counts are in the result; no diff is produced.
options:
  db:
    description: The database holding the table; taken literally, at most 63 bytes.
    type: str
    required: true
    aliases: [login_db]
  schema:
    description: The table's schema.
    type: str
    default: public
  table:
    description: The table to purge (a partitioned table purges its partitions).
    type: str
    required: true
  column:
    description: With O(older_than), the timestamp (or date) column compared with the cut.
    type: str
  older_than:
    description:
      - Rows whose O(column) is before C(now() - older_than) (the server's clock, taken once at the start) match.
      - A duration such as V(90d), V(12h), V(1h30m).
    type: raw
  where:
    description:
      - A predicate (SQL) selecting the rows to delete, for example C(tenant_id = %(tenant)s AND created_at < %(cut)s).
      - Values come from O(parameters) as named placeholders C(%(name)s); write a literal C(%) as C(%%).
    type: str
  parameters:
    description: Values bound to the named placeholders of O(where); names starting with C(runbook_) are reserved.
    type: dict
    default: {}
  key:
    description:
      - The indexed column the batches walk in order; it should be the column the predicate's index starts with.
      - Empty means O(column) with O(older_than), else the table's one-column primary key.
      - Rows whose O(key) is null are not deleted.
    type: str
  batch_size:
    description:
      - Rows per batch (one transaction each), from 1 to 1000000.
      - Empty means the size adapts so that a batch takes about O(batch_duration); set it for a fixed size.
      - A batch can hold more only when rows matching the predicate are inserted into its key range between its probe
        and its C(DELETE).
    type: int
  batch_duration:
    description:
      - Without O(batch_size), the time a batch should take (a duration from V(10ms) to V(1h)). The first batch has
        1000 rows; each next one is scaled by this duration over the last batch's, at most 4 times up or down at
        once, from 100 to 1000000 rows.
      - Fewer, larger batches spend less on round trips and commits; smaller ones hold their row locks for less time
        and send the replicas smaller transactions.
    type: raw
    default: 500ms
  pause:
    description: Sleep between batches (a duration such as V(100ms)); gives replicas and other sessions room.
    type: raw
    default: 0s
  max_rows:
    description:
      - Safety cap. When more rows than this match (rows in partitions to drop included), nothing is deleted and the task
        fails saying how many matched; raise it after checking the predicate.
    type: int
    default: 1000000
  max_duration:
    description: No batch starts after this much time (a duration); the result says RV(stopped_because=max_duration).
    type: raw
  max_replication_lag:
    description:
      - Pause while any replica (in C(pg_stat_replication)) has more than this much WAL to replay (bytes, or V(64MB)),
        and stop when it is still behind after O(lag_wait). Needs C(pg_monitor) to see the replay positions.
    type: raw
  lag_wait:
    description: How long to wait for lagging replicas before stopping the run.
    type: raw
    default: 1m
  lock_timeout:
    description:
      - C(lock_timeout) of every batch and partition drop. A batch that waits longer for a lock is rolled back and the
        run stops (RV(stopped_because=lock_timeout)); run it again later to continue.
    type: raw
    default: 2s
  allow_seq_scan:
    description: Run even when no index serves the predicate (each batch then scans the table).
    type: bool
    default: false
  drop_partitions:
    description: Drop whole partitions before the cut when the table is range-partitioned on O(column); false deletes their rows in batches.
    type: bool
    default: true
notes:
  - Partitions are detached with a plain C(DETACH PARTITION), which briefly takes an C(ACCESS EXCLUSIVE) lock on the
    partitioned table (bounded by O(lock_timeout)).
seealso:
  - module: runbook.ops.pg_health
  - module: runbook.ops.pg_maintenance
"""

EXAMPLES = r"""
- name: Nightly purge of audit logs older than 90 days, gentle on replicas
  runbook.ops.pg_purge:
    login_host: db.example.internal
    login_user: maintenance
    login_password: "{{ vault_pg_maintenance_password }}"
    db: auth_service
    table: audit_logs
    column: created_at
    older_than: 90d
    max_duration: 30m
    max_replication_lag: 64MB
  register: purge

- name: Purge one tenant's expired sessions (bound parameters)
  runbook.ops.pg_purge:
    login_host: db.example.internal
    login_user: maintenance
    login_password: "{{ vault_pg_maintenance_password }}"
    db: auth_service
    table: sessions
    where: "tenant_id = %(tenant)s AND expires_at < now()"
    parameters:
      tenant: 42
    key: expires_at
"""

RETURN = r"""
changed:
  description: True when rows were deleted or partitions dropped (in check mode, when some would be).
  returned: always
  type: bool
msg:
  description: What was done (or would be done), and why the run stopped early if it did.
  returned: always
  type: str
  sample: deleted 2000000 row(s) of public.audit_logs in 12 batch(es)
deleted:
  description: Rows deleted by batches (0 in check mode).
  returned: always
  type: int
  sample: 2000000
batches:
  description: Batches committed.
  returned: always
  type: int
  sample: 12
partitions_dropped:
  description: The partitions detached and dropped (C(schema.name)); in check mode, the partitions that would be.
  returned: always
  type: list
  elements: str
  sample: [public.audit_logs_2025_01]
stopped_because:
  description:
    - Null when every matching row was removed; else why the run stopped early (V(max_duration), V(replication_lag),
      V(lock_timeout)). Run the task again to continue.
  returned: always
  type: str
matched:
  description: Rows matching at the start (rows of partitions to drop included).
  returned: always
  type: int
remaining:
  description: Matching rows not removed by this run.
  returned: always
  type: int
lag_pauses:
  description: How often the run paused for lagging replicas.
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
from ansible_collections.runbook.ops.plugins.module_utils._pg_purge import PgPurgeOptions, run_pg_purge


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = postgres_connection_argspec()
    spec.update(
        db=dict(type="str", required=True, aliases=["login_db"]),
        schema=dict(type="str", default="public"),
        table=dict(type="str", required=True),
        column=dict(type="str"),
        older_than=dict(type="raw"),
        where=dict(type="str"),
        parameters=dict(type="dict", default={}),
        key=dict(type="str", no_log=False),
        batch_size=dict(type="int"),
        batch_duration=dict(type="raw", default="500ms"),
        pause=dict(type="raw", default="0s"),
        max_rows=dict(type="int", default=1000000),
        max_duration=dict(type="raw"),
        max_replication_lag=dict(type="raw"),
        lag_wait=dict(type="raw", default="1m"),
        lock_timeout=dict(type="raw", default="2s"),
        allow_seq_scan=dict(type="bool", default=False),
        drop_partitions=dict(type="bool", default=True),
    )
    return dict(
        argument_spec=spec,
        mutually_exclusive=[("older_than", "where")],
        required_one_of=[("older_than", "where")],
        required_by=dict(older_than="column"),
        supports_check_mode=True,
        sensitive=[tunnel_kubeconfig_secrets],
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, PgPurgeOptions.from_params, run_pg_purge)


if __name__ == "__main__":
    main()
