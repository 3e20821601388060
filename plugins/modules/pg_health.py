#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_health
short_description: Judge the health of a PostgreSQL server and its databases, as findings
version_added: 0.2.0
description:
  - Reads a PostgreSQL server with a handful of queries and returns findings (the shared
    C(severity), C(check), C(object), C(message), C(details) schema), the worst severity as RV(status) and a
    count per severity as RV(summary).
  - 'Server-wide checks (one query each): C(connectivity) and server version; C(connections) as a share of
    C(max_connections) minus the reserved slots; C(long_transactions) and C(idle_in_transaction) (oldest
    transactions and sessions idle inside one); C(lock_waits) (who waits, how long, the blocking PIDs and when
    their query started); C(txid_wraparound) per database against C(autovacuum_freeze_max_age);
    C(cache_hit_ratio) and C(database_size) per database; C(replication_lag) per replica in bytes and seconds;
    C(replication_slots) (inactive slots and the WAL they retain); C(prepared_transactions).'
  - 'Per checked database (two queries each): C(last_vacuum), C(last_analyze) and C(dead_tuples) of every table of at
    least O(min_table_size); C(table_bloat) and C(index_bloat) (estimates from the ANALYZE statistics, V(unknown) when
    they are missing or stale); C(invalid_indexes) (a failed C(CREATE INDEX CONCURRENTLY) or C(REINDEX CONCURRENTLY)).'
  - A lag of zero bytes is a lag of zero seconds, whatever C(pg_last_xact_replay_timestamp()) says (on an idle
    primary that timestamp only ages).
  - A privilege the role lacks makes the checks that need it V(unknown), naming the grant (C(pg_monitor)); it never
    fails the task. Run as a member of C(pg_monitor) for every check.
  - Read only; every query runs in autocommit mode, so the module never holds a transaction open.
  - Default thresholds follow check_postgres where it has one; see the thresholds table in C(docs/pg_health.md).
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
    description: The module only reads; check mode runs every check as usual.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
options:
  db:
    description:
      - The database to connect to for the server-wide checks; taken literally, at most 63 bytes.
      - The environment variable E(PGDATABASE) is used when this is not set (only a place to connect to; the
        per-database checks follow O(databases)).
    type: str
    default: postgres
    aliases: [login_db]
  databases:
    description:
      - The databases whose tables and indexes are checked (the per-database checks).
      - Empty means every database that allows connections (templates excluded). A database the role may not connect
        to gives V(unknown) findings naming the missing C(CONNECT) grant.
    type: list
    elements: str
    default: []
  checks:
    description: The checks to run (stable ids; each finding's C(check) is one of them).
    type: list
    elements: str
    choices: [connectivity, connections, long_transactions, idle_in_transaction, lock_waits, txid_wraparound,
              cache_hit_ratio, database_size, replication_lag, replication_slots, prepared_transactions,
              last_vacuum, last_analyze, dead_tuples, table_bloat, index_bloat, invalid_indexes]
    default: [connectivity, connections, long_transactions, idle_in_transaction, lock_waits, txid_wraparound,
              cache_hit_ratio, database_size, replication_lag, replication_slots, prepared_transactions,
              last_vacuum, last_analyze, dead_tuples, table_bloat, index_bloat, invalid_indexes]
  min_table_size:
    description:
      - Tables (and indexes, for C(index_bloat)) smaller than this are not judged by the per-table checks.
      - A number of bytes or a size such as V(512kB), V(10MB), V(1GB) (1024-based).
    type: raw
    default: 10MB
  fail_on:
    description:
      - Fail the task, after returning every result, when RV(status) reaches this level.
      - V(unknown) ranks above V(warning), so V(warning) also fails when something could not be checked.
    type: str
    choices: [never, warning, critical]
    default: never
  thresholds:
    description:
      - Warning and critical levels of every measure. Durations are seconds or V(90s), V(5m), V(1h), V(2d); sizes are
        bytes or V(16MB), V(1GB). An empty level is not judged.
    type: dict
    default: {}
    suboptions:
      connections_warning:
        description: Percent of the usable connections (C(max_connections) minus reserved slots) in use.
        type: float
        default: 90
      connections_critical:
        description: Percent of the usable connections in use.
        type: float
        default: 95
      transaction_age_warning:
        description: Age of a transaction that is not idle (C(long_transactions)).
        type: raw
        default: 10m
      transaction_age_critical:
        description: Age of a transaction that is not idle.
        type: raw
        default: 1h
      idle_in_transaction_warning:
        description: Time a session has sat idle inside a transaction.
        type: raw
        default: 5m
      idle_in_transaction_critical:
        description: Time a session has sat idle inside a transaction.
        type: raw
        default: 30m
      lock_wait_warning:
        description: Time a session has waited for a lock (check_postgres C(lockwait)).
        type: raw
        default: 1m
      lock_wait_critical:
        description: Time a session has waited for a lock.
        type: raw
        default: 2m
      txid_age_warning:
        description: A database's transaction ID age (check_postgres C(txn_wraparound)).
        type: float
        default: 1300000000
      txid_age_critical:
        description: A database's transaction ID age.
        type: float
        default: 1400000000
      freeze_max_age_warning:
        description: A database's transaction ID age as a percent of C(autovacuum_freeze_max_age) (check_postgres C(autovac_freeze)).
        type: float
        default: 90
      freeze_max_age_critical:
        description: The same, critical level.
        type: float
        default: 95
      vacuum_age_warning:
        description: Time since a table's last vacuum or autovacuum (check_postgres C(last_vacuum)).
        type: raw
        default: 1d
      vacuum_age_critical:
        description: Time since a table's last vacuum or autovacuum.
        type: raw
        default: 2d
      analyze_age_warning:
        description: Time since a table's last analyze or autoanalyze (check_postgres C(last_analyze)).
        type: raw
        default: 1d
      analyze_age_critical:
        description: Time since a table's last analyze or autoanalyze.
        type: raw
        default: 2d
      dead_tuples_warning:
        description: Dead rows as a percent of all rows of a table.
        type: float
        default: 20
      dead_tuples_critical:
        description: Dead rows as a percent of all rows of a table.
        type: float
        default: 50
      bloat_warning:
        description: Estimated bloat of a table or index (check_postgres C(bloat)).
        type: raw
        default: 1GB
      bloat_critical:
        description: Estimated bloat of a table or index.
        type: raw
        default: 5GB
      cache_hit_ratio_warning:
        description: A database's cache hit ratio, in percent, at or below which it warns (judged after 10000 block accesses).
        type: float
        default: 90
      cache_hit_ratio_critical:
        description: A database's cache hit ratio, in percent, at or below which it is critical.
        type: float
        default: 80
      database_size_warning:
        description: A database's size; empty reports the size as V(info) only.
        type: raw
      database_size_critical:
        description: A database's size; empty reports the size as V(info) only.
        type: raw
      replication_lag_bytes_warning:
        description: WAL a replica has not replayed yet.
        type: raw
        default: 16MB
      replication_lag_bytes_critical:
        description: WAL a replica has not replayed yet.
        type: raw
        default: 1GB
      replication_lag_warning:
        description: A replica's replay lag in time (zero when it has replayed everything).
        type: raw
        default: 1m
      replication_lag_critical:
        description: A replica's replay lag in time.
        type: raw
        default: 5m
      slot_retained_wal_warning:
        description: WAL a replication slot keeps on the server (an inactive slot is at least a warning).
        type: raw
        default: 1GB
      slot_retained_wal_critical:
        description: WAL a replication slot keeps on the server.
        type: raw
        default: 10GB
      prepared_transaction_age_warning:
        description: Age of a prepared transaction (check_postgres C(prepared_txns)).
        type: raw
        default: 1s
      prepared_transaction_age_critical:
        description: Age of a prepared transaction.
        type: raw
        default: 30s
notes:
  - Bloat is an estimate computed from C(reltuples) and the average column widths in C(pg_stats); it is reported as
    V(unknown) when a table was never analyzed or more than 20% of its rows changed since, and it ignores TOAST.
  - A table never vacuumed (or analyzed) since its statistics were reset is a V(warning).
seealso:
  - module: runbook.ops.pg_maintenance
  - module: runbook.ops.pg_purge
"""

EXAMPLES = r"""
- name: Daily check of the platform database server
  runbook.ops.pg_health:
    login_host: db.example.internal
    login_user: monitor
    login_password: "{{ vault_pg_monitor_password }}"
    databases: [auth_service]
    fail_on: critical
  register: pg

- name: Show what needs attention
  ansible.builtin.debug:
    msg: "{{ pg.findings | rejectattr('severity', 'in', ['ok', 'info']) | map(attribute='message') | list }}"

- name: Only the replication checks, stricter lag limits
  runbook.ops.pg_health:
    login_host: db.example.internal
    login_user: monitor
    login_password: "{{ vault_pg_monitor_password }}"
    checks: [connectivity, replication_lag, replication_slots]
    thresholds:
      replication_lag_bytes_warning: 1MB
      replication_lag_warning: 10s
"""

RETURN = r"""
changed:
  description: Always V(false); the module only reads.
  returned: always
  type: bool
  sample: false
msg:
  description:
    - The verdict in words, with the count of critical, unknown and warning findings.
    - When O(fail_on) is reached, why the task failed; every other field is still returned.
  returned: always
  type: str
  sample: "PostgreSQL health on 10.0.0.5:5432 is warning: 2 warning (1 database(s) checked in 8 queries)"
status:
  description: The worst severity among the findings (V(ok), V(info), V(warning), V(unknown), V(critical)).
  returned: always
  type: str
  sample: warning
summary:
  description: The number of findings per severity.
  returned: always
  type: dict
  sample: {"ok": 14, "info": 2, "warning": 2, "unknown": 0, "critical": 0}
findings:
  description: What was found, worst first; every check that ran and found nothing adds one V(ok) finding.
  returned: always
  type: list
  elements: dict
  contains:
    severity:
      description: V(ok), V(info), V(warning), V(unknown) (could not be checked) or V(critical).
      type: str
    check:
      description: The stable check id (one of O(checks)).
      type: str
    object:
      description: >-
        What the finding is about, for example C(server/10.0.0.5:5432), C(database/auth), C(table/auth/public.audit_logs),
        C(index/auth/public.audit_logs_created_idx_ccnew), C(session/4711), C(replica/walreceiver), C(slot/standby_1).
      type: str
    message:
      description: The finding in words.
      type: str
    details:
      description: The measured facts (for example C(wait_s) and C(blocked_by) of a lock wait, C(lag_bytes) and C(lag_seconds) of a replica).
      type: dict
server:
  description: Version, recovery state and the role the checks ran as; null when the server could not be reached.
  returned: always
  type: dict
  sample: {"version": "15.6", "version_num": 150006, "in_recovery": false, "role": "monitor"}
databases_checked:
  description: The databases whose tables and indexes were checked.
  returned: always
  type: list
  elements: str
checks_run:
  description: The checks that ran (only C(connectivity) when the server could not be reached).
  returned: always
  type: list
  elements: str
queries:
  description: The number of queries the checks sent (connections not counted).
  returned: always
  type: int
  sample: 8
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.21
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._env import env_default
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import tunnel_kubeconfig_secrets
from ansible_collections.runbook.ops.plugins.module_utils._findings import FAIL_ON_CHOICES
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import postgres_connection_argspec
from ansible_collections.runbook.ops.plugins.module_utils._pg_health import CHECKS, PgHealthOptions, run_pg_health


def threshold_args() -> t.Dict[str, t.Any]:
    """The ``thresholds`` suboptions: one warning and one critical level per measure."""
    levels: t.Dict[str, t.Tuple[str, t.Any, t.Any]] = dict(
        connections=("float", 90, 95),
        transaction_age=("raw", "10m", "1h"),
        idle_in_transaction=("raw", "5m", "30m"),
        lock_wait=("raw", "1m", "2m"),
        txid_age=("float", 1300000000, 1400000000),
        freeze_max_age=("float", 90, 95),
        vacuum_age=("raw", "1d", "2d"),
        analyze_age=("raw", "1d", "2d"),
        dead_tuples=("float", 20, 50),
        bloat=("raw", "1GB", "5GB"),
        cache_hit_ratio=("float", 90, 80),
        database_size=("raw", None, None),
        replication_lag_bytes=("raw", "16MB", "1GB"),
        replication_lag=("raw", "1m", "5m"),
        slot_retained_wal=("raw", "1GB", "10GB"),
        prepared_transaction_age=("raw", "1s", "30s"),
    )
    spec: t.Dict[str, t.Any] = {}
    for name, (kind, warning, critical) in levels.items():
        spec["%s_warning" % name] = dict(type=kind, default=warning)
        spec["%s_critical" % name] = dict(type=kind, default=critical)
    return spec


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = postgres_connection_argspec()
    spec.update(
        db=dict(type="str", default="postgres", aliases=["login_db"], fallback=env_default("PGDATABASE")),
        databases=dict(type="list", elements="str", default=[]),
        checks=dict(type="list", elements="str", choices=list(CHECKS), default=list(CHECKS)),
        min_table_size=dict(type="raw", default="10MB"),
        fail_on=dict(type="str", choices=list(FAIL_ON_CHOICES), default="never"),
        thresholds=dict(type="dict", default={}, apply_defaults=True, options=threshold_args()),
    )
    return dict(argument_spec=spec, supports_check_mode=True, sensitive=[tunnel_kubeconfig_secrets])


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, PgHealthOptions.from_params, run_pg_health)


if __name__ == "__main__":
    main()
