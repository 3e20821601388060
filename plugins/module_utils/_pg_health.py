# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks behind ``runbook.ops.pg_health``: read a PostgreSQL server with a handful of queries
(settings, one snapshot of ``pg_stat_activity``, databases, replication, slots, prepared
transactions, then tables and indexes of each checked database) and judge what was read.

Reading and judging are separate: ``judge_*`` functions are pure (rows in, findings out) and unit
tested without a server; :class:`_Scan` does the reading, one query per subject, and turns a
missing privilege into an ``unknown`` finding that names the grant (``pg_monitor``), never a
failure of the task. Everything is read only, in autocommit mode (no transaction is held open).
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task, options_from
from ansible_collections.runbook.ops.plugins.module_utils._findings import (
    Finding, Limit, finding, judged, limits_from)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    byte_size, check_params, human_bytes, human_seconds, pg_name)
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (
    PgConnection, PgConnectionOptions, import_psycopg, last_line, open_endpoint)
from ansible_collections.runbook.ops.plugins.module_utils._pg_stats import (
    IndexStats, TableStats, read_indexes, read_tables)

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

APPLICATION = "pg_health"
SERVER_CHECKS = ("connectivity", "connections", "long_transactions", "idle_in_transaction", "lock_waits",
                 "txid_wraparound", "cache_hit_ratio", "database_size", "replication_lag", "replication_slots",
                 "prepared_transactions")
DATABASE_CHECKS = ("last_vacuum", "last_analyze", "dead_tuples", "table_bloat", "index_bloat", "invalid_indexes")
CHECKS = SERVER_CHECKS + DATABASE_CHECKS
# Checks that read other sessions' state, which PostgreSQL shows only to superusers and members of
# pg_read_all_stats (pg_monitor includes it).
ACTIVITY_CHECKS = ("long_transactions", "idle_in_transaction", "lock_waits")
MONITOR_GRANT = "pg_monitor"
# A database needs this many block reads and hits before its cache hit ratio says anything.
MIN_CACHE_ACCESSES = 10000

DURATION_THRESHOLDS = ("transaction_age", "idle_in_transaction", "lock_wait", "vacuum_age", "analyze_age",
                       "replication_lag", "prepared_transaction_age")
SIZE_THRESHOLDS = ("bloat", "database_size", "replication_lag_bytes", "slot_retained_wal")
NUMBER_THRESHOLDS = ("connections", "txid_age", "freeze_max_age", "dead_tuples", "cache_hit_ratio")
LOWER_IS_WORSE = ("cache_hit_ratio",)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Every measure's levels, from the ``thresholds`` option (durations in seconds, sizes in bytes)."""

    limits: t.Mapping[str, Limit]

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "Thresholds":
        kinds = dict([(name, "duration") for name in DURATION_THRESHOLDS] + [(name, "size") for name in SIZE_THRESHOLDS]
                     + [(name, "number") for name in NUMBER_THRESHOLDS])
        return cls(limits_from(params["thresholds"], kinds, LOWER_IS_WORSE))

    def __getitem__(self, name: str) -> Limit:
        return self.limits[name]


@dataclasses.dataclass(frozen=True)
class PgHealthOptions:
    """What ``pg_health`` checks, on which databases, and when its verdict fails the task."""

    connection: PgConnectionOptions
    db: str
    databases: t.List[str]
    checks: t.List[str]
    min_table_size: int
    thresholds: Thresholds
    fail_on: str

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "PgHealthOptions":
        connection = PgConnectionOptions.from_params(params)
        check_params(params, dict(db=pg_name, databases=pg_name))
        return options_from(cls, params, connection=connection, thresholds=Thresholds.from_params(params),
                            checks=list(dict.fromkeys(params["checks"])), databases=list(dict.fromkeys(params["databases"])),
                            min_table_size=byte_size("min_table_size", params["min_table_size"]))


# --------------------------------------------------------------------------- judging (pure)

def _human(seconds: t.Optional[float]) -> str:
    return "unknown" if seconds is None else human_seconds(float(round(seconds)))


def _pct(value: float) -> str:
    return "%.1f%%" % value


def ok_finding(check: str, obj: str, message: str, **details: t.Any) -> Finding:
    return finding("ok", check, obj, message, details)


def unknown_finding(check: str, obj: str, why: str, **details: t.Any) -> Finding:
    return finding("unknown", check, obj, "%s could not be checked: %s" % (check, why), details)


def missing_grant(role: str) -> str:
    return ("role %s may not read other sessions' statistics; GRANT %s TO %s (or pg_read_all_stats)"
            % (role, MONITOR_GRANT, role))


class Activity(t.NamedTuple):
    """One backend of ``pg_stat_activity`` (ages in seconds)."""

    pid: int
    database: t.Optional[str]
    user: t.Optional[str]
    application: str
    state: t.Optional[str]
    backend_type: t.Optional[str]
    transaction_age: t.Optional[float]
    state_age: t.Optional[float]
    query_start: t.Optional[str]
    wait_event_type: t.Optional[str]
    wait_age: t.Optional[float]
    blocked_by: t.List[int]
    query: str


def _session(item: Activity) -> str:
    return "session/%d" % item.pid


def _session_details(item: Activity) -> t.Dict[str, t.Any]:
    return {"pid": item.pid, "database": item.database, "user": item.user, "application": item.application,
            "state": item.state, "query_start": item.query_start, "query": item.query}


def judge_connections(clients: int, max_connections: int, reserved: int, limit: Limit, where: str) -> Finding:
    """Client connections as a share of the slots ordinary roles may use."""
    usable = max(1, max_connections - reserved)
    share = 100.0 * clients / usable
    severity = limit.grade(share)
    return finding(severity, "connections", where, "%d of %d usable connections in use (%s; max_connections %d, %d reserved)"
                   % (clients, usable, _pct(share), max_connections, reserved),
                   {"connections": clients, "usable": usable, "max_connections": max_connections, "reserved": reserved,
                    "percent": round(share, 1)})


def judge_transactions(sessions: t.Sequence[Activity], th: Thresholds, where: str) -> t.Dict[str, t.List[Finding]]:
    """The oldest open transactions and the sessions idle in a transaction (one finding each above a level)."""
    found: t.Dict[str, t.List[Finding]] = {"long_transactions": [], "idle_in_transaction": []}
    for item in sessions:
        if item.transaction_age is None:
            continue
        idle = (item.state or "").startswith("idle in transaction")
        check, limit, age = (("idle_in_transaction", th["idle_in_transaction"], item.state_age) if idle
                             else ("long_transactions", th["transaction_age"], item.transaction_age))
        severity = limit.grade(age)
        if severity != "ok":
            what = "idle in transaction for" if idle else "in a transaction for"
            details = dict(_session_details(item), transaction_age_s=round(item.transaction_age, 1),
                           idle_s=round(item.state_age or 0.0, 1) if idle else None)
            found[check].append(finding(severity, check, _session(item), "pid %d (user %s, application %r, database %s) %s %s"
                                        % (item.pid, item.user, item.application, item.database, what, _human(age)), details))
    oldest = max((s.transaction_age for s in sessions if s.transaction_age is not None), default=None)
    for check in found:
        if not found[check]:
            found[check].append(ok_finding(check, where, "no session over the threshold (oldest transaction: %s)"
                                           % ("none" if oldest is None else _human(oldest)), oldest_transaction_s=oldest))
    return found


def judge_lock_waits(sessions: t.Sequence[Activity], limit: Limit, where: str) -> t.List[Finding]:
    """Sessions waiting for a lock, naming the sessions that block them and when their query started."""
    by_pid = {item.pid: item for item in sessions}
    findings = []
    for item in sessions:
        if item.wait_event_type != "Lock":
            continue
        severity = limit.grade(item.wait_age)
        blockers = [by_pid[pid] for pid in item.blocked_by if pid in by_pid]
        named = ", ".join("pid %d (user %s, %s, query started %s)" % (b.pid, b.user, b.state, b.query_start)
                          for b in blockers) or ", ".join("pid %d" % pid for pid in item.blocked_by) or "unknown"
        details = dict(_session_details(item), wait_s=None if item.wait_age is None else round(item.wait_age, 1),
                       blocked_by=[{"pid": b.pid, "user": b.user, "state": b.state, "query_start": b.query_start,
                                    "query": b.query} for b in blockers] or [{"pid": pid} for pid in item.blocked_by])
        findings.append(finding(severity if severity != "ok" else "info", "lock_waits", _session(item),
                                "pid %d has waited %s for a lock held by %s" % (item.pid, _human(item.wait_age), named),
                                details))
    if not any(f["severity"] != "info" for f in findings):
        findings.append(ok_finding("lock_waits", where, "%d session(s) waiting for a lock, none over the threshold"
                                   % len(findings), waiting=len(findings)))
    return findings


def judge_wraparound(rows: t.Sequence[t.Tuple[str, int]], freeze_max_age: int, th: Thresholds) -> t.List[Finding]:
    """Each database's oldest unfrozen transaction ID, against ``autovacuum_freeze_max_age`` and the absolute limits."""
    findings = []
    for name, age in rows:
        share = 100.0 * age / max(freeze_max_age, 1)
        by_share = th["freeze_max_age"].grade(share)
        by_age = th["txid_age"].grade(age)
        severity = by_age if by_age == "critical" or by_share == "ok" else by_share
        findings.append(finding(severity, "txid_wraparound", "database/%s" % name,
                                "transaction ID age %d is %s of autovacuum_freeze_max_age (%d)" % (age, _pct(share), freeze_max_age),
                                {"database": name, "age": age, "percent_of_freeze_max_age": round(share, 1),
                                 "autovacuum_freeze_max_age": freeze_max_age}))
    return findings


def judge_cache(name: str, hits: int, reads: int, limit: Limit) -> Finding:
    obj = "database/%s" % name
    accesses = hits + reads
    if accesses < MIN_CACHE_ACCESSES:
        # Counts stay in details: they grow with every check (this one's queries too), and a message
        # that changed on every run would make every report a change.
        return finding("info", "cache_hit_ratio", obj, "too few block accesses (fewer than %d) to judge the cache hit ratio"
                       % MIN_CACHE_ACCESSES, {"hits": hits, "reads": reads})
    ratio = 100.0 * hits / accesses
    return finding(limit.grade(ratio), "cache_hit_ratio", obj, "cache hit ratio %s" % _pct(ratio),
                   {"hits": hits, "reads": reads, "percent": round(ratio, 2)})


def judge_size(name: str, size: t.Optional[int], limit: Limit) -> Finding:
    obj = "database/%s" % name
    if size is None:
        return unknown_finding("database_size", obj, "the role has no CONNECT privilege on it (or pg_read_all_stats)")
    severity = limit.grade(size)
    return finding("info" if severity == "ok" else severity, "database_size", obj, "size %s" % human_bytes(size),
                   {"bytes": size})


class Replica(t.NamedTuple):
    name: str
    client: t.Optional[str]
    state: t.Optional[str]
    lag_bytes: t.Optional[int]
    replay_lag_s: t.Optional[float]


def judge_replica(replica: Replica, th: Thresholds) -> Finding:
    """Lag in bytes and seconds. A replica that has replayed everything has no lag, whatever its last
    replay timestamp says (on an idle primary that timestamp only ages)."""
    obj = "replica/%s" % (replica.name or replica.client or "unnamed")
    if replica.lag_bytes is None:
        return unknown_finding("replication_lag", obj, "its replay position is not visible (%s)" % MONITOR_GRANT)
    seconds = 0.0 if replica.lag_bytes == 0 else replica.replay_lag_s
    by_bytes = th["replication_lag_bytes"].grade(replica.lag_bytes)
    by_time = th["replication_lag"].grade(seconds)
    severity = "critical" if "critical" in (by_bytes, by_time) else "warning" if "warning" in (by_bytes, by_time) else "ok"
    return finding(severity, "replication_lag", obj, "%s behind, replay lag %s (%s)" % (
        human_bytes(replica.lag_bytes), _human(seconds), replica.state or "state unknown"),
        {"lag_bytes": replica.lag_bytes, "lag_seconds": seconds, "client": replica.client, "state": replica.state})


class Slot(t.NamedTuple):
    name: str
    kind: str
    active: bool
    wal_status: t.Optional[str]
    retained_bytes: t.Optional[int]


def judge_slot(slot: Slot, limit: Limit) -> Finding:
    """An inactive slot keeps WAL on the primary until it is used or dropped."""
    severity = limit.grade(slot.retained_bytes)
    if slot.wal_status == "lost":
        severity = "critical"
    elif not slot.active and severity == "ok":
        severity = "warning"
    state = "active" if slot.active else "inactive"
    return finding(severity, "replication_slots", "slot/%s" % slot.name, "%s %s slot retains %s of WAL%s" % (
        state, slot.kind, human_bytes(slot.retained_bytes), ", its WAL is lost" if slot.wal_status == "lost" else ""),
        {"active": slot.active, "type": slot.kind, "wal_status": slot.wal_status, "retained_bytes": slot.retained_bytes})


def judge_prepared(rows: t.Sequence[t.Tuple[str, str, str, float]], limit: Limit, where: str) -> t.List[Finding]:
    findings = []
    for gid, database, owner, age in rows:
        severity = limit.grade(age)
        message = "prepared transaction %r in database %s (owner %s) is %s old" % (gid, database, owner, _human(age))
        findings.append(finding(severity if severity != "ok" else "info", "prepared_transactions",
                                "prepared_transaction/%s" % gid, message,
                                {"gid": gid, "database": database, "owner": owner, "age_s": round(age, 1)}))
    if not findings:
        findings.append(ok_finding("prepared_transactions", where, "no prepared transaction"))
    return findings


def judge_tables(database: str, tables: t.Sequence[TableStats], min_size: int, th: Thresholds,
                 now_s: float) -> t.Dict[str, t.List[Finding]]:
    """Vacuum and analyze age, dead rows and estimated bloat of every table of at least ``min_size`` bytes."""
    found: t.Dict[str, t.List[Finding]] = {name: [] for name in ("last_vacuum", "last_analyze", "dead_tuples", "table_bloat")}
    judged = [table for table in tables if table.size >= min_size]
    for table in judged:
        obj = "table/%s/%s" % (database, table.qualified)
        size = {"bytes": table.size}
        for check, verb, when, limit in (("last_vacuum", "vacuumed", table.last_vacuum, th["vacuum_age"]),
                                         ("last_analyze", "analyzed", table.last_analyze, th["analyze_age"])):
            if when is None:
                found[check].append(finding("warning", check, obj, "never %s (by hand or autovacuum) since statistics "
                                            "were reset" % verb, size))
                continue
            age = now_s - when.timestamp()
            severity = limit.grade(age)
            if severity != "ok":
                found[check].append(finding(severity, check, obj, "last %s %s ago" % (verb, _human(age)),
                                            dict(size, age_s=round(age))))
        ratio = 100.0 * table.dead_ratio
        severity = th["dead_tuples"].grade(ratio)
        if severity != "ok":
            found["dead_tuples"].append(finding(severity, "dead_tuples", obj, "%d dead rows, %s of all rows" % (
                table.dead, _pct(ratio)), dict(size, dead=table.dead, live=table.live, percent=round(ratio, 1))))
        bloat = table.estimated_bloat
        if bloat is None:
            found["table_bloat"].append(finding("unknown", "table_bloat", obj, "bloat estimate unknown: statistics are "
                                                "missing or stale (run ANALYZE)", size))
        elif th["bloat"].grade(bloat) != "ok":
            found["table_bloat"].append(finding(th["bloat"].grade(bloat), "table_bloat", obj, "estimated bloat %s of %s"
                                                % (human_bytes(bloat), human_bytes(table.size)), dict(size, estimated_bloat=bloat)))
    for check, items in found.items():
        if not items:
            items.append(ok_finding(check, "database/%s" % database, "%d table(s) of at least %s checked, none over the "
                                    "threshold" % (len(judged), human_bytes(min_size)), tables=len(judged)))
    return found


def judge_indexes(database: str, indexes: t.Sequence[IndexStats], min_size: int,
                  th: Thresholds) -> t.Dict[str, t.List[Finding]]:
    """Invalid indexes (a failed CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY) and estimated B-tree bloat."""
    found: t.Dict[str, t.List[Finding]] = {"invalid_indexes": [], "index_bloat": []}
    for index in indexes:
        obj = "index/%s/%s" % (database, index.qualified)
        details = {"table": index.qualified_table, "bytes": index.size, "unique": index.unique}
        if not index.valid:
            why = ("left behind by an interrupted REINDEX CONCURRENTLY; drop it" if index.leftover_of_reindex
                   else "a failed CREATE INDEX CONCURRENTLY or REINDEX; rebuild it (REINDEX INDEX CONCURRENTLY)")
            severity = "critical" if index.unique and not index.leftover_of_reindex else "warning"
            found["invalid_indexes"].append(finding(severity, "invalid_indexes", obj, "index %s on %s is invalid: %s"
                                                    % (index.qualified, index.qualified_table, why),
                                                    dict(details, leftover_of_reindex=index.leftover_of_reindex)))
            continue
        bloat = index.estimated_bloat
        if index.size >= min_size and bloat is not None and th["bloat"].grade(bloat) != "ok":
            found["index_bloat"].append(finding(th["bloat"].grade(bloat), "index_bloat", obj, "estimated bloat %s of %s"
                                                % (human_bytes(bloat), human_bytes(index.size)), dict(details, estimated_bloat=bloat)))
    if not found["invalid_indexes"]:
        found["invalid_indexes"].append(ok_finding("invalid_indexes", "database/%s" % database, "all %d index(es) valid"
                                                   % len(indexes), indexes=len(indexes)))
    if not found["index_bloat"]:
        found["index_bloat"].append(ok_finding("index_bloat", "database/%s" % database, "no B-tree index over the "
                                               "threshold (estimated)", indexes=len(indexes)))
    return found


# --------------------------------------------------------------------------- reading

_SERVER_SQL = """
SELECT current_setting('server_version'), current_setting('server_version_num')::int, pg_is_in_recovery(),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int + coalesce(current_setting('reserved_connections', true), '0')::int,
       current_setting('autovacuum_freeze_max_age')::bigint, current_user,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role(current_user, 'pg_read_all_stats', 'member'),
       extract(epoch FROM now())::float8
"""

_ACTIVITY_SQL = """
SELECT a.pid, a.datname, a.usename, coalesce(a.application_name, ''), a.state, a.backend_type,
       extract(epoch FROM now() - a.xact_start)::float8, extract(epoch FROM now() - a.state_change)::float8,
       to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), a.wait_event_type,
       extract(epoch FROM now() - %s)::float8, pg_blocking_pids(a.pid), left(coalesce(a.query, ''), 200)
  FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid()
"""
# PostgreSQL 14 records when a lock wait started; before that the query's start is the best bound.
_WAIT_START_14 = "(SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted)"

_DATABASES_SQL = """
SELECT d.datname, d.datallowconn AND NOT d.datistemplate, age(d.datfrozenxid),
       CASE WHEN has_database_privilege(d.oid, 'CONNECT') OR pg_has_role(current_user, 'pg_read_all_stats', 'member')
            THEN pg_database_size(d.oid) END,
       coalesce(s.blks_hit, 0), coalesce(s.blks_read, 0), has_database_privilege(d.oid, 'CONNECT')
  FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid ORDER BY 1
"""

_REPLICAS_SQL = """
SELECT coalesce(application_name, ''), client_addr::text, state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, extract(epoch FROM replay_lag)::float8
  FROM pg_stat_replication ORDER BY 1, 2
"""

_STANDBY_SQL = """
SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""

_SLOTS_SQL = """
SELECT slot_name, slot_type, active, wal_status,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
                       restart_lsn)::bigint
  FROM pg_replication_slots ORDER BY 1
"""

_PREPARED_SQL = """
SELECT gid, database, owner, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts ORDER BY prepared
"""


class ServerFacts(t.NamedTuple):
    version: str
    version_num: int
    in_recovery: bool
    max_connections: int
    reserved: int
    freeze_max_age: int
    role: str
    reads_all_stats: bool
    now_s: float


class _Scan:
    """Reads the server for the selected checks and collects findings; counts its queries."""

    def __init__(self, server: PgConnection, opts: PgHealthOptions) -> None:
        self.server = server
        self.opts = opts
        self.th = opts.thresholds
        self.where = "server/%s" % server.where
        self.findings: t.List[Finding] = []
        self.queries = 0
        self.databases_checked: t.List[str] = []

    def wants(self, *checks: str) -> bool:
        return any(check in self.opts.checks for check in checks)

    def add(self, findings: t.Iterable[Finding]) -> None:
        self.findings.extend(item for item in findings if item["check"] in self.opts.checks)

    def query(self, cur: "psycopg.Cursor[t.Any]", sql: str) -> t.List[t.Tuple[t.Any, ...]]:
        self.queries += 1
        cur.execute(sql)
        return list(cur.fetchall())

    def guarded(self, checks: t.Sequence[str], obj: str, read: t.Callable[[], None]) -> None:
        """Run ``read``; a privilege the role lacks makes these checks ``unknown`` naming the grant."""
        psycopg = import_psycopg()
        try:
            read()
        except psycopg.errors.InsufficientPrivilege as exc:
            self.add(unknown_finding(check, obj, "%s (GRANT %s TO %s)" % (last_line(str(exc)), MONITOR_GRANT, self.server.user))
                     for check in checks)
        except psycopg.Error as exc:
            self.add(unknown_finding(check, obj, last_line(str(exc))) for check in checks)

    def run(self) -> t.Optional[ServerFacts]:
        try:
            connection = self.server.connect(self.opts.db)
        except RunbookError as exc:
            self.findings.append(finding("critical", "connectivity", self.where, exc.msg))
            return None
        with connection:
            cur = connection.cursor()
            row = self.query(cur, _SERVER_SQL)[0]
            facts = ServerFacts(row[0], int(row[1]), bool(row[2]), int(row[3]), int(row[4]), int(row[5]), row[6],
                                bool(row[7]), float(row[8]))
            self.add([ok_finding("connectivity", self.where, "accepting connections: PostgreSQL %s (%s)" % (
                facts.version, "standby" if facts.in_recovery else "primary"), server_version=facts.version,
                server_version_num=facts.version_num, in_recovery=facts.in_recovery)])
            self._server_checks(cur, facts)
            databases = self._databases(cur, facts)
        for database in databases:
            self._database_checks(database, facts)
        return facts

    def _server_checks(self, cur: "psycopg.Cursor[t.Any]", facts: ServerFacts) -> None:
        if self.wants("connections", *ACTIVITY_CHECKS):
            self.guarded(("connections",) + ACTIVITY_CHECKS, self.where, lambda: self._activity(cur, facts))
        if self.wants("replication_lag"):
            self.guarded(("replication_lag",), self.where, lambda: self._replication(cur, facts))
        if self.wants("replication_slots"):
            self.guarded(("replication_slots",), self.where, lambda: self._slots(cur))
        if self.wants("prepared_transactions"):
            self.guarded(("prepared_transactions",), self.where, lambda: self.add(judge_prepared(
                [(r[0], r[1], r[2], float(r[3])) for r in self.query(cur, _PREPARED_SQL)],
                self.th["prepared_transaction_age"], self.where)))

    def _activity(self, cur: "psycopg.Cursor[t.Any]", facts: ServerFacts) -> None:
        wait_start = _WAIT_START_14 if facts.version_num >= 140000 else "a.query_start"
        sessions = [Activity(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], list(r[11] or []), r[12])
                    for r in self.query(cur, _ACTIVITY_SQL % wait_start)]
        clients = sum(1 for s in sessions if s.backend_type == "client backend") + 1  # and this session
        self.add([judge_connections(clients, facts.max_connections, facts.reserved, self.th["connections"], self.where)])
        if not facts.reads_all_stats:
            self.add(unknown_finding(check, self.where, missing_grant(facts.role)) for check in ACTIVITY_CHECKS)
            return
        for items in judge_transactions(sessions, self.th, self.where).values():
            self.add(items)
        self.add(judge_lock_waits(sessions, self.th["lock_wait"], self.where))

    def _replication(self, cur: "psycopg.Cursor[t.Any]", facts: ServerFacts) -> None:
        if facts.in_recovery:
            lag_bytes, replay_age = self.query(cur, _STANDBY_SQL)[0]
            self.add([judge_replica(Replica("this standby", None, "in recovery", None if lag_bytes is None else int(lag_bytes),
                                            replay_age), self.th)])
            return
        replicas = [Replica(r[0], r[1], r[2], None if r[3] is None else int(r[3]), r[4])
                    for r in self.query(cur, _REPLICAS_SQL)]
        if replicas and not facts.reads_all_stats:
            self.add([unknown_finding("replication_lag", self.where, missing_grant(facts.role))])
            return
        self.add(judge_replica(replica, self.th) for replica in replicas)
        if not replicas:
            self.add([ok_finding("replication_lag", self.where, "no replica connected")])

    def _slots(self, cur: "psycopg.Cursor[t.Any]") -> None:
        slots = [Slot(r[0], r[1], bool(r[2]), r[3], None if r[4] is None else int(r[4])) for r in self.query(cur, _SLOTS_SQL)]
        self.add(judge_slot(slot, self.th["slot_retained_wal"]) for slot in slots)
        if not slots:
            self.add([ok_finding("replication_slots", self.where, "no replication slot")])

    def _databases(self, cur: "psycopg.Cursor[t.Any]", facts: ServerFacts) -> t.List[str]:
        """Server-wide per-database checks; returns the databases whose tables are checked."""
        rows = self.query(cur, _DATABASES_SQL)
        self.add(judge_wraparound([(r[0], int(r[2])) for r in rows], facts.freeze_max_age, self.th))
        connectable = {r[0]: bool(r[6]) for r in rows if r[1]}
        for r in rows:
            if r[1]:
                self.add([judge_size(r[0], None if r[3] is None else int(r[3]), self.th["database_size"]),
                          judge_cache(r[0], int(r[4]), int(r[5]), self.th["cache_hit_ratio"])])
        if not self.wants(*DATABASE_CHECKS):
            return []
        wanted = self.opts.databases or sorted(connectable)
        chosen = []
        for name in wanted:
            if name not in connectable and name not in (r[0] for r in rows):
                raise RunbookError('database "%s" does not exist on %s' % (name, self.server.where))
            if not connectable.get(name):
                self.add(unknown_finding(check, "database/%s" % name, "role %s may not connect to it (GRANT CONNECT) or it "
                                         "does not allow connections" % facts.role) for check in DATABASE_CHECKS)
                continue
            chosen.append(name)
        return chosen

    def _database_checks(self, database: str, facts: ServerFacts) -> None:
        obj = "database/%s" % database
        try:
            connection = self.server.connect(database)
        except RunbookError as exc:
            self.add(unknown_finding(check, obj, exc.msg) for check in DATABASE_CHECKS)
            return
        with connection:
            cur = connection.cursor()

            def read() -> None:
                if self.wants("last_vacuum", "last_analyze", "dead_tuples", "table_bloat"):
                    self.queries += 1
                    for items in judge_tables(database, read_tables(cur), self.opts.min_table_size, self.th,
                                              facts.now_s).values():
                        self.add(items)
                if self.wants("invalid_indexes", "index_bloat"):
                    self.queries += 1
                    for items in judge_indexes(database, read_indexes(cur), self.opts.min_table_size, self.th).values():
                        self.add(items)
            self.guarded(DATABASE_CHECKS, obj, read)
        self.databases_checked.append(database)


def run_pg_health(task: Task[PgHealthOptions]) -> Result:
    """Everything ``pg_health`` returns; fails, keeping it all, when ``fail_on`` is reached."""
    opts = task.options
    endpoint = open_endpoint(task, opts.connection)  # the one place this module decides where the server is
    scan = _Scan(PgConnection(opts.connection, APPLICATION, endpoint=endpoint), opts)
    facts = scan.run()
    return judged("PostgreSQL health on %s" % scan.server.where, scan.findings, opts.fail_on,
                  "%d database(s) checked in %d queries" % (len(scan.databases_checked), scan.queries),
                  server=None if facts is None else {
                      "version": facts.version, "version_num": facts.version_num, "in_recovery": facts.in_recovery,
                      "role": facts.role},
                  databases_checked=scan.databases_checked,
                  checks_run=list(opts.checks) if facts is not None else ["connectivity"],
                  queries=scan.queries)
