# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work of ``pg_maintenance``: choose the tables and indexes that need ANALYZE, VACUUM, VACUUM FULL
or a concurrent REINDEX (by thresholds, or from explicit lists), then run one statement per target.

Safety comes from how each statement runs, not from the caller: the connection is in autocommit
mode, so no statement is ever inside a transaction block (where VACUUM and REINDEX CONCURRENTLY
fail); ``lock_timeout`` and ``statement_timeout`` are set for the session; VACUUM and ANALYZE use
``SKIP_LOCKED`` (a locked table is skipped at once, so nobody queues behind us); REINDEX is always
``CONCURRENTLY``, and when it gives up on a lock the invalid ``_ccnew`` index it leaves is dropped
(or found by the next run). No operation starts once the ``window`` has closed.

Choosing (:func:`plan`) is pure: statistics in, targets out, unit tested without a server.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Stopwatch, Task, options_from, parse_time, utcnow)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    byte_size, check_params, duration, human_bytes, number, pg_name, shown)
from ansible_collections.runbook.ops.plugins.module_utils._pg_catalog import quote_ident, server_major
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (
    PgConnection, PgConnectionOptions, import_psycopg, last_line, open_endpoint)
from ansible_collections.runbook.ops.plugins.module_utils._pg_stats import (
    IndexStats, TableStats, read_indexes, read_tables)

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

APPLICATION = "pg_maintenance"
OPERATIONS = ("analyze", "vacuum", "vacuum_full", "reindex")
# The order operations run in: leftovers first (they slow every write), ANALYZE last (VACUUM ANALYZE covers its tables).
_ORDER = {"drop_leftover": 0, "reindex": 1, "vacuum": 2, "vacuum_full": 3, "analyze": 4}
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_SKIPPED_NOTICE = re.compile(r"^skipping (vacuum|analyze) of .*lock not available", re.IGNORECASE)


def window_deadline(not_after: t.Optional[str], max_duration: t.Optional[float],
                    now: datetime.datetime) -> t.Optional[datetime.datetime]:
    """When the window closes: the next ``HH:MM`` (the managed host's local time) or an ISO 8601 time, and
    ``now + max_duration``, whichever comes first."""
    ends = []
    if not_after:
        clock = _CLOCK.match(not_after.strip())
        if clock:
            local = now.astimezone()
            end = local.replace(hour=int(clock.group(1)), minute=int(clock.group(2)), second=0, microsecond=0)
            if end <= local:
                end += datetime.timedelta(days=1)
            ends.append(end.astimezone(datetime.timezone.utc))
        else:
            ends.append(parse_time(not_after, "window.not_after"))
    if max_duration is not None:
        ends.append(now + datetime.timedelta(seconds=max_duration))
    return min(ends) if ends else None


def _table_name(what: str, value: str) -> t.Tuple[str, str]:
    """``schema.name`` or ``name`` (schema ``public``)."""
    schema, name = value.rpartition(".")[::2]
    pg_name(what, name)
    return (pg_name(what, schema) if schema else "public"), name


@dataclasses.dataclass(frozen=True)
class PgMaintenanceOptions:
    """The validated options of one ``pg_maintenance`` task (durations in seconds, sizes in bytes)."""

    connection: PgConnectionOptions
    db: str
    operations: t.List[str]
    tables: t.List[t.Tuple[str, str]]
    indexes: t.List[t.Tuple[str, str]]
    vacuum_full_tables: t.List[t.Tuple[str, str]]
    min_table_size: int
    dead_tuples: float
    analyze_modified: float
    bloat: int
    lock_timeout: float
    statement_timeout: float
    deadline: t.Optional[datetime.datetime]

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "PgMaintenanceOptions":
        connection = PgConnectionOptions.from_params(params)
        check_params(params, dict(db=pg_name))
        operations = list(dict.fromkeys(params["operations"]))
        window = params["window"]
        if "vacuum_full" in operations and not (window["not_after"] or window["max_duration"]):
            raise RunbookError("operation vacuum_full needs a window (window.not_after or window.max_duration): VACUUM FULL "
                               "locks its table for the whole rewrite")
        if "vacuum_full" in operations and not params["vacuum_full_tables"]:
            raise RunbookError("operation vacuum_full needs vacuum_full_tables: it is opt-in, table by table")
        max_duration = window["max_duration"]
        names = {option: [_table_name("%s[%d]" % (option, i), str(v)) for i, v in enumerate(params[option])]
                 for option in ("tables", "indexes", "vacuum_full_tables")}
        return options_from(
            cls, params, connection=connection, operations=operations, **names,
            min_table_size=byte_size("min_table_size", params["min_table_size"]),
            dead_tuples=number("dead_tuples", params["dead_tuples"], 0.0, 100.0),
            analyze_modified=number("analyze_modified", params["analyze_modified"], 0.0, 100.0),
            bloat=byte_size("bloat", params["bloat"]),
            lock_timeout=duration("lock_timeout", params["lock_timeout"], 0.001, 86400.0),
            statement_timeout=duration("statement_timeout", params["statement_timeout"], 0.0),
            deadline=window_deadline(window["not_after"], None if max_duration is None else
                                     duration("window.max_duration", max_duration, 0.0, above=True), utcnow()))


@dataclasses.dataclass
class Target:
    """One operation on one table or index, why it was chosen and what became of it."""

    operation: str
    schema: str
    name: str
    reason: str
    table: t.Optional[str] = None
    status: str = "planned"
    skipped_because: t.Optional[str] = None
    duration_s: float = 0.0
    size_before: t.Optional[int] = None
    size_after: t.Optional[int] = None

    @property
    def qualified(self) -> str:
        return "%s.%s" % (self.schema, self.name)

    @property
    def sql_name(self) -> str:
        return "%s.%s" % (quote_ident(self.schema), quote_ident(self.name))

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {"operation": self.operation, "object": self.qualified, "table": self.table, "reason": self.reason,
                "status": self.status, "skipped_because": self.skipped_because, "duration_s": self.duration_s,
                "size_before": self.size_before, "size_after": self.size_after}


def _pct(value: float) -> str:
    return "%.1f%%" % value


def _table_targets(opts: PgMaintenanceOptions, tables: t.Sequence[TableStats]) -> t.List[Target]:
    listed = set(opts.tables)
    full = set(opts.vacuum_full_tables) if "vacuum_full" in opts.operations else set()
    targets: t.List[Target] = []
    for table in tables:
        key = (table.schema, table.name)
        big = table.size >= opts.min_table_size
        if key in full:
            bloat = table.estimated_bloat
            if bloat is not None and bloat >= opts.bloat:
                targets.append(Target("vacuum_full", table.schema, table.name, "estimated bloat %s (threshold %s)"
                                      % (human_bytes(bloat), human_bytes(opts.bloat))))
                continue
            targets.append(Target("vacuum_full", table.schema, table.name, "listed in vacuum_full_tables",
                                  status="skipped", skipped_because="estimated bloat %s is below %s" % (
                                      human_bytes(bloat), human_bytes(opts.bloat)) if bloat is not None else
                                  "bloat estimate unknown: statistics missing or stale (run analyze first)"))
        vacuum_why = ("listed in tables" if key in listed else "dead rows %s of all rows (threshold %s)" % (
            _pct(100 * table.dead_ratio), _pct(opts.dead_tuples)) if big and 100 * table.dead_ratio >= opts.dead_tuples
            else None)
        if "vacuum" in opts.operations and vacuum_why:
            targets.append(Target("vacuum", table.schema, table.name, vacuum_why))
            continue
        modified = 100.0 * table.modified_since_analyze / max(table.reltuples, 1.0)
        analyze_why = ("listed in tables" if key in listed else "never analyzed" if big and table.last_analyze is None
                       else "%s of its rows changed since the last analyze (threshold %s)" % (
                           _pct(modified), _pct(opts.analyze_modified))
                       if big and modified >= opts.analyze_modified and table.modified_since_analyze else None)
        if "analyze" in opts.operations and analyze_why:
            targets.append(Target("analyze", table.schema, table.name, analyze_why))
    return targets


def _index_targets(opts: PgMaintenanceOptions, indexes: t.Sequence[IndexStats]) -> t.List[Target]:
    if "reindex" not in opts.operations:
        return []
    listed = set(opts.indexes)
    targets = []
    for index in indexes:
        if index.leftover_of_reindex:
            targets.append(Target("drop_leftover", index.schema, index.name, "invalid index left by an interrupted "
                                  "REINDEX CONCURRENTLY", table=index.qualified_table))
            continue
        bloat = index.estimated_bloat
        why = ("listed in indexes" if (index.schema, index.name) in listed
               else "invalid (a failed CREATE INDEX CONCURRENTLY or REINDEX)" if not index.valid
               else "estimated bloat %s (threshold %s)" % (human_bytes(bloat), human_bytes(opts.bloat))
               if bloat is not None and bloat >= opts.bloat and index.size >= opts.min_table_size else None)
        if why:
            targets.append(Target("reindex", index.schema, index.name, why, table=index.qualified_table))
    return targets


def plan(opts: PgMaintenanceOptions, tables: t.Sequence[TableStats], indexes: t.Sequence[IndexStats]) -> t.List[Target]:
    """Every target, in the order they run; explicit names that do not exist are an error."""
    known_tables = {(tb.schema, tb.name) for tb in tables}
    known_indexes = {(ix.schema, ix.name) for ix in indexes}
    explicit = (("tables", opts.tables, known_tables), ("vacuum_full_tables", opts.vacuum_full_tables, known_tables),
                ("indexes", opts.indexes, known_indexes))
    for option, names, known in explicit:
        for schema, name in names:
            if (schema, name) not in known:
                raise RunbookError("%s: %s.%s does not exist in database %s" % (option, schema, name, shown(opts.db)))
    targets = _table_targets(opts, tables) + _index_targets(opts, indexes)
    return sorted(targets, key=lambda target: (_ORDER[target.operation], target.qualified))


class Maintenance:
    """Runs the planned targets one statement at a time on an autocommit connection."""

    def __init__(self, task: Task[PgMaintenanceOptions], server: PgConnection) -> None:
        self.task = task
        self.opts = task.options
        self.server = server
        self.notices: t.List[str] = []

    def run(self) -> Result:
        watch = Stopwatch()
        connection = self.server.connect(self.opts.db, autocommit=True)
        try:
            connection.add_notice_handler(lambda diag: self.notices.append(str(diag.message_primary or "")))
            cur = connection.cursor()
            major = server_major(cur)
            targets = plan(self.opts, read_tables(cur), read_indexes(cur))
            if not self.task.check_mode:
                cur.execute("SET lock_timeout = '%dms'" % max(1, int(self.opts.lock_timeout * 1000)))
                cur.execute("SET statement_timeout = '%dms'" % int(self.opts.statement_timeout * 1000))
                for target in targets:
                    if target.status == "planned":
                        self._run_one(cur, target, major)
        finally:
            connection.close()
        return self._result(targets, watch)

    def _result(self, targets: t.Sequence[Target], watch: Stopwatch) -> Result:
        done = [tg for tg in targets if tg.status == "done"]
        skipped = [tg for tg in targets if tg.status == "skipped"]
        failed = [tg for tg in targets if tg.status == "failed"]
        planned = [tg for tg in targets if tg.status == "planned"]
        result: Result = {"changed": bool(done) or (self.task.check_mode and bool(planned)),
                          "targets": [tg.as_dict() for tg in targets], "done": len(done), "skipped": len(skipped),
                          "failed": len(failed), "duration_s": watch.elapsed}
        if self.task.check_mode:
            result["msg"] = "would run %d operation(s) on database %s (%s)%s" % (
                len(planned), self.opts.db, ", ".join("%s %s" % (tg.operation, tg.qualified) for tg in planned) or "nothing",
                "; %d skipped" % len(skipped) if skipped else "")
        else:
            result["msg"] = "ran %d operation(s) on database %s, skipped %d%s" % (
                len(done), self.opts.db, len(skipped), "; skipped: " + "; ".join(
                    "%s %s (%s)" % (tg.operation, tg.qualified, tg.skipped_because) for tg in skipped) if skipped else "")
        if failed:
            kept = {key: value for key, value in result.items() if key != "msg"}
            causes = "; ".join("%s %s: %s" % (tg.operation, tg.qualified, tg.skipped_because) for tg in failed)
            raise RunbookError("%d maintenance operation(s) on database %s failed: %s" % (len(failed), self.opts.db, causes),
                               **kept)
        return result

    def _size(self, cur: "psycopg.Cursor[t.Any]", target: Target) -> t.Optional[int]:
        function = "pg_relation_size" if target.table else "pg_total_relation_size"
        cur.execute("SELECT %s(to_regclass(%%s))" % function, (target.sql_name,))
        row = cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _statement(self, target: Target, major: int) -> t.Optional[str]:
        if target.operation == "analyze":
            return "ANALYZE (SKIP_LOCKED) %s" % target.sql_name
        if target.operation == "vacuum":
            return "VACUUM (SKIP_LOCKED, ANALYZE) %s" % target.sql_name
        if target.operation == "vacuum_full":
            return "VACUUM (FULL, SKIP_LOCKED, ANALYZE) %s" % target.sql_name
        if target.operation == "drop_leftover":
            return "DROP INDEX CONCURRENTLY IF EXISTS %s" % target.sql_name
        if major < 12:
            return None
        return "REINDEX INDEX CONCURRENTLY %s" % target.sql_name

    def _run_one(self, cur: "psycopg.Cursor[t.Any]", target: Target, major: int) -> None:
        psycopg = import_psycopg()
        if self.opts.deadline is not None and utcnow() >= self.opts.deadline:
            target.status, target.skipped_because = "skipped", "the window closed (no new operation after %s)" % (
                self.opts.deadline.strftime("%Y-%m-%dT%H:%M:%SZ"))
            return
        statement = self._statement(target, major)
        if statement is None:
            target.status, target.skipped_because = "skipped", "REINDEX CONCURRENTLY needs PostgreSQL 12 or later"
            return
        watch = Stopwatch()
        target.size_before = self._size(cur, target)
        del self.notices[:]
        try:
            cur.execute(statement)
        except psycopg.errors.LockNotAvailable:
            target.status, target.skipped_because = "skipped", "a lock was not granted within lock_timeout (%gs)" % (
                self.opts.lock_timeout)
            if target.operation == "reindex":
                self._drop_new_leftover(cur, target)
        except psycopg.errors.QueryCanceled as exc:
            target.status, target.skipped_because = "failed", "statement_timeout: %s" % last_line(str(exc))
            if target.operation == "reindex":
                self._drop_new_leftover(cur, target)
        except psycopg.Error as exc:
            target.status, target.skipped_because = "failed", last_line(str(exc))
        else:
            locked = [notice for notice in self.notices if _SKIPPED_NOTICE.match(notice)]
            if locked:
                target.status, target.skipped_because = "skipped", "the table was locked by another session (SKIP_LOCKED)"
            else:
                target.status = "done"
        target.duration_s = watch.elapsed
        target.size_after = self._size(cur, target)

    def _drop_new_leftover(self, cur: "psycopg.Cursor[t.Any]", target: Target) -> None:
        """A REINDEX CONCURRENTLY that gave up leaves ``<index>_ccnew[N]``, invalid; drop it now if the locks allow."""
        psycopg = import_psycopg()
        cur.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT i.indisvalid AND c.relname ~ %s",
                    (target.schema, "^%s_ccnew[0-9]*$" % re.escape(target.name)))
        for (name,) in cur.fetchall():
            try:
                cur.execute("DROP INDEX CONCURRENTLY IF EXISTS %s.%s" % (quote_ident(target.schema), quote_ident(name)))
            except psycopg.Error as exc:
                self.task.warn("the invalid index %s.%s left by the interrupted reindex of %s could not be dropped (%s); "
                               "the next run drops it" % (target.schema, name, target.qualified, last_line(str(exc))))


def run_pg_maintenance(task: Task[PgMaintenanceOptions]) -> Result:
    """``pg_maintenance``: plan, then (unless in check mode) run each target within the window."""
    opts = task.options
    endpoint = open_endpoint(task, opts.connection)  # the one place this module decides where the server is
    return Maintenance(task, PgConnection(opts.connection, APPLICATION, endpoint=endpoint)).run()
