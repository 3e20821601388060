# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work of ``pg_purge``: delete the rows of one table that match a predicate, in bounded batches.

Why not one ``DELETE``: it holds its row locks until the end, bloats the table in one go, and ships
the whole change to the replicas at once. Here every batch is its own short transaction with a
``lock_timeout``: an index probe finds where the next ``batch_size`` matching rows end in the order
of (``key``, primary key or ``ctid``), and one ``DELETE`` bounded on both sides by index conditions
on ``key`` removes them. The next batch starts after that position (keyset continuation), so a batch
never scans the table nor walks over the index entries of rows already deleted (a walk from the start
each time would make the run quadratic). A killed run leaves whole batches done and the next run
simply continues (the predicate still matches what is left).

When the table is range-partitioned on the purge column, the partitions whose upper bound is at or
before the cut are detached and dropped instead of deleted row by row.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Stopwatch, Task, options_from)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    check_params, duration, int_in, no_control, optional, pg_name, shown)
from ansible_collections.runbook.ops.plugins.module_utils._pg_catalog import quote_ident
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (
    PgConnection, PgConnectionOptions, import_psycopg, last_line, open_endpoint)
from ansible_collections.runbook.ops.plugins.module_utils._names import byte_size, human_bytes

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

APPLICATION = "pg_purge"
MAX_BATCH = 1000000
FIRST_BATCH = 1000  # rows in the first batch when the size adapts to batch_duration
MIN_BATCH = 100
RESERVED_PARAMETER = "runbook_"
LAG_POLL_S = 1.0
_RANGE_BOUND = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$", re.DOTALL)

_LAG_SQL = ("SELECT count(*), count(replay_lsn), max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::bigint "
            "FROM pg_stat_replication")


@dataclasses.dataclass(frozen=True)
class PgPurgeOptions:
    """The validated options of one ``pg_purge`` task (durations in seconds, sizes in bytes)."""

    connection: PgConnectionOptions
    db: str
    schema: str
    table: str
    column: t.Optional[str]
    older_than: t.Optional[float]
    where: t.Optional[str]
    parameters: t.Dict[str, t.Any]
    key: t.Optional[str]
    batch_size: t.Optional[int]
    batch_duration: float
    pause: float
    max_rows: int
    max_duration: t.Optional[float]
    max_replication_lag: t.Optional[int]
    lag_wait: float
    lock_timeout: float
    allow_seq_scan: bool
    drop_partitions: bool

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "PgPurgeOptions":
        connection = PgConnectionOptions.from_params(params)
        check_params(params, dict(db=pg_name, schema=pg_name, table=pg_name, column=optional(pg_name),
                                  key=optional(pg_name), where=no_control))
        if params["batch_size"] is not None:
            int_in("batch_size", params["batch_size"], 1, MAX_BATCH)
        int_in("max_rows", params["max_rows"], 0, 2 ** 62)
        if params["parameters"] and not params["where"]:
            raise RunbookError("parameters are bound to the placeholders of where, which is not set")
        for name in params["parameters"]:
            if str(name).startswith(RESERVED_PARAMETER):
                raise RunbookError("parameters: the name %s is reserved (names starting with %s are the module's own)"
                                   % (shown(name), RESERVED_PARAMETER))
        lag = params["max_replication_lag"]
        return options_from(
            cls, params, connection=connection,
            older_than=None if params["older_than"] is None else duration("older_than", params["older_than"], 0.0, above=True),
            pause=duration("pause", params["pause"]),
            max_duration=None if params["max_duration"] is None else duration("max_duration", params["max_duration"], 0.0, above=True),
            max_replication_lag=None if lag is None else byte_size("max_replication_lag", lag),
            lag_wait=duration("lag_wait", params["lag_wait"]),
            batch_duration=duration("batch_duration", params["batch_duration"], 0.01, 3600.0),
            lock_timeout=duration("lock_timeout", params["lock_timeout"], 0.001, 86400.0))

    @property
    def qualified(self) -> str:
        return "%s.%s" % (self.schema, self.table)


class Leaf(t.NamedTuple):
    """A table the rows are deleted from: the table itself, or one leaf partition of it."""

    schema: str
    name: str

    @property
    def sql(self) -> str:
        return "%s.%s" % (quote_ident(self.schema), quote_ident(self.name))

    @property
    def qualified(self) -> str:
        return "%s.%s" % (self.schema, self.name)


Position = t.Tuple[t.Any, t.Any]
"""Where a batch ended: (key, tie); tie None when every row with that key is done."""


class Walk(t.NamedTuple):
    """The order a purge walks a table in: ``key``, then ``tie`` to order rows with equal keys (the one-column
    primary key, else ``ctid``; None when ``key`` is the primary key). ``name`` is the key column; ``key`` and
    ``tie`` are SQL (quoted names, or ``ctid``), each with the SQL type its bounds are cast to."""

    name: str
    key: str
    key_type: str
    tie: t.Optional[str]
    tie_type: t.Optional[str]

    @property
    def both(self) -> str:
        return self.key if self.tie is None else "%s, %s" % (self.key, self.tie)

    def after(self, position: t.Optional[Position]) -> t.List[str]:
        """The condition "after ``position``" (on ``runbook_after_*``), as an index condition on ``key``."""
        if position is None:
            return []
        key = "%s > %%(runbook_after_key)s::%s" % (self.key, self.key_type)
        if position[1] is None or self.tie is None:
            return [key]
        return ["(%s) > (%%(runbook_after_key)s::%s, %%(runbook_after_tie)s::%s)" % (
            self.both, self.key_type, self.tie_type)]

    @staticmethod
    def values(position: t.Optional[Position]) -> t.Dict[str, t.Any]:
        if position is None:
            return {}
        return {"runbook_after_key": position[0], "runbook_after_tie": position[1]}


class Partition(t.NamedTuple):
    schema: str
    name: str
    rows: int

    @property
    def qualified(self) -> str:
        return "%s.%s" % (self.schema, self.name)


def plan_uses_index(plan: t.Any, relation: str) -> bool:
    """True when an EXPLAIN (FORMAT JSON) plan reads ``relation`` through an index condition (not a
    sequential scan, nor an index walked whole with the predicate as a filter)."""
    nodes: t.List[t.Mapping[str, t.Any]] = []

    def walk(node: t.Mapping[str, t.Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []) or []:
            walk(child)
    walk(plan[0]["Plan"] if isinstance(plan, list) else plan["Plan"])
    on_relation = [node for node in nodes if node.get("Relation Name") == relation or
                   (node.get("Node Type") == "Bitmap Index Scan")]
    if any(node.get("Node Type") == "Seq Scan" for node in on_relation):
        return False
    return any("Index Cond" in node for node in on_relation)


def next_batch_size(size: int, took: float, target: float) -> int:
    """The size of the next batch so it takes about ``target`` seconds, when this one of ``size`` rows took
    ``took``: scaled by target/took, at most 4x up or down at once (one slow or fast batch does not swing it)."""
    ratio = min(4.0, max(0.25, target / max(took, 0.001)))
    return int(min(MAX_BATCH, max(MIN_BATCH, size * ratio)))


def partition_upper_bound(expression: str) -> t.Optional[str]:
    """The upper bound literal of ``FOR VALUES FROM (...) TO ('...')``; None for MAXVALUE, DEFAULT, lists, several columns."""
    match = _RANGE_BOUND.match(expression.strip())
    if not match:
        return None
    upper = match.group(2).strip()
    if not (upper.startswith("'") and upper.endswith("'")) or "', '" in upper:
        return None
    return upper[1:-1].replace("''", "'")


class Purge:
    """One purge run: resolve the table, plan, then drop partitions and delete in batches."""

    def __init__(self, task: Task[PgPurgeOptions], server: PgConnection) -> None:
        self.task = task
        self.opts = task.options
        self.server = server
        self.watch = Stopwatch()
        self.params: t.Dict[str, t.Any] = dict(self.opts.parameters)
        self.deleted = 0
        self.batches = 0
        self.lag_pauses = 0
        self.dropped: t.List[str] = []
        self.stopped_because: t.Optional[str] = None
        self.size = self.opts.batch_size or FIRST_BATCH

    # ------------------------------------------------------------------ planning

    def _table(self, cur: "psycopg.Cursor[t.Any]") -> t.Tuple[int, str]:
        cur.execute("SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s", (self.opts.schema, self.opts.table))
        row = cur.fetchone()
        if row is None or row[1] not in ("r", "p"):
            raise RunbookError('table "%s" does not exist in database "%s" on %s' % (
                self.opts.qualified, self.opts.db, self.server.where))
        return int(row[0]), str(row[1])

    def _walk(self, cur: "psycopg.Cursor[t.Any]", oid: int) -> "Walk":
        """The order the batches walk in: ``key`` (else ``column``, else the one-column primary key), then the
        one-column primary key (else ``ctid``) to break ties, so equal keys never straddle a batch boundary."""
        cur.execute("SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey::int2[]) WHERE i.indrelid = %s AND i.indisprimary", (oid,))
        row = cur.fetchone()
        names = row[0] if row and row[0] else []
        primary = str(names[0]) if len(names) == 1 else None
        key = self.opts.key or self.opts.column or primary
        if key is None:
            raise RunbookError("table %s has no one-column primary key to walk in batches; set key to an indexed "
                               "column" % self.opts.qualified)
        types: t.Dict[str, str] = {}
        for column in sorted({key, self.opts.column or key, primary or key}):
            cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s AND attname = %s "
                        "AND attnum > 0 AND NOT attisdropped", (oid, column))
            found = cur.fetchone()
            if found is None:
                raise RunbookError('column "%s" does not exist in table %s' % (column, self.opts.qualified))
            types[column] = str(found[0])
        if key == primary:
            return Walk(key, quote_ident(key), types[key], None, None)
        if primary is None:
            return Walk(key, quote_ident(key), types[key], "ctid", "tid")
        return Walk(key, quote_ident(key), types[key], quote_ident(primary), types[primary])

    def _predicate(self, cur: "psycopg.Cursor[t.Any]") -> str:
        if self.opts.older_than is not None and self.opts.column:
            cur.execute("SELECT now() - make_interval(secs => %s)", (self.opts.older_than,))
            row = cur.fetchone()
            self.params["runbook_cut"] = row[0] if row else None
            return "%s < %%(runbook_cut)s" % quote_ident(self.opts.column)
        return "(%s)" % self.opts.where

    def _droppable(self, cur: "psycopg.Cursor[t.Any]", oid: int) -> t.List[Partition]:
        """Direct partitions wholly before the cut, when the table is range-partitioned on ``column`` alone."""
        if self.opts.older_than is None or not self.opts.drop_partitions or not self.opts.column:
            return []
        cur.execute("SELECT p.partstrat, p.partnatts, a.attname, format_type(a.atttypid, a.atttypmod) "
                    "FROM pg_partitioned_table p JOIN pg_attribute a ON a.attrelid = p.partrelid "
                    "AND a.attnum = p.partattrs[0] WHERE p.partrelid = %s", (oid,))
        row = cur.fetchone()
        if row is None or row[0] != "r" or row[1] != 1 or row[2] != self.opts.column:
            return []
        type_name = row[3]
        cur.execute("SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE i.inhparent = %s ORDER BY 2", (oid,))
        partitions = []
        for schema, name, bound in cur.fetchall():
            upper = partition_upper_bound(bound or "")
            if upper is None:
                continue
            cur.execute("SELECT %%s::%s <= %%s" % type_name, (upper, self.params["runbook_cut"]))
            older = cur.fetchone()
            if older and older[0]:
                cur.execute("SELECT count(*) FROM %s.%s" % (quote_ident(schema), quote_ident(name)))
                counted = cur.fetchone()
                partitions.append(Partition(schema, name, int(counted[0]) if counted else 0))
        return partitions

    def _leaves(self, cur: "psycopg.Cursor[t.Any]", oid: int, relkind: str, dropped: t.Sequence[Partition]) -> t.List[Leaf]:
        if relkind == "r":
            return [Leaf(self.opts.schema, self.opts.table)]
        gone = [p.qualified for p in dropped]
        cur.execute("SELECT n.nspname, c.relname, (SELECT array_agg(n2.nspname || '.' || c2.relname) FROM "
                    "pg_partition_ancestors(t.relid) anc JOIN pg_class c2 ON c2.oid = anc.relid "
                    "JOIN pg_namespace n2 ON n2.oid = c2.relnamespace) "
                    "FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf AND c.relkind = 'r' ORDER BY 2", (oid,))
        return [Leaf(row[0], row[1]) for row in cur.fetchall() if not set(row[2] or []) & set(gone)]

    def _check_index(self, cur: "psycopg.Cursor[t.Any]", leaf: Leaf, predicate: str, walk: Walk) -> None:
        """Refuse a predicate that no index serves (each batch would scan the table) unless allowed."""
        if self.opts.allow_seq_scan:
            return
        psycopg = import_psycopg()
        # the first batch's probe: later ones also bound the key, which any index on it would serve
        sql = "EXPLAIN (FORMAT JSON) " + self._probe_sql(leaf, [predicate], walk.both, 1)
        try:
            with cur.connection.transaction():
                cur.execute("SET LOCAL enable_seqscan = off")
                cur.execute(sql, dict(self.params, runbook_limit=self.size))
                row = cur.fetchone()
        except psycopg.Error as exc:
            raise RunbookError("the purge predicate on %s is not valid: %s" % (leaf.qualified, last_line(str(exc))))
        plan = row[0] if row else []
        if isinstance(plan, str):
            plan = json.loads(plan)
        if not plan_uses_index(plan, leaf.name):
            raise RunbookError("no index serves the purge predicate on %s in the order of %s, so every batch would scan "
                               "the table; create an index (e.g. on %s) or set allow_seq_scan" % (
                                   leaf.qualified, walk.name, self.opts.column or walk.name))

    # ------------------------------------------------------------------ statements

    @staticmethod
    def _probe_sql(leaf: Leaf, conditions: t.Sequence[str], columns: str, rows: int) -> str:
        """The ``columns`` of the ``runbook_limit``-th matching row in their order (and of the next ``rows`` - 1)."""
        return ("SELECT %s FROM ONLY %s WHERE %s ORDER BY %s OFFSET %%(runbook_limit)s - 1 LIMIT %d"
                % (columns, leaf.sql, " AND ".join(conditions), columns, rows))

    @staticmethod
    def _delete_sql(leaf: Leaf, conditions: t.Sequence[str], upto: t.Optional[str] = None) -> str:
        """A batch: the matching rows after the previous position, up to ``upto`` (a condition on the bound
        placeholders ``runbook_upto_*``; None for the last batch)."""
        return "DELETE FROM ONLY %s WHERE %s" % (leaf.sql, " AND ".join(list(conditions) + ([upto] if upto else [])))

    def _count(self, cur: "psycopg.Cursor[t.Any]", leaf: Leaf, predicate: str) -> int:
        cur.execute("SELECT count(*) FROM ONLY %s WHERE %s" % (leaf.sql, predicate), self.params)
        row = cur.fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ running

    def run(self) -> Result:
        opts = self.opts
        psycopg = import_psycopg()
        connection = self.server.connect(opts.db, autocommit=True)
        try:
            cur = connection.cursor()
            cur.execute(self._lock_timeout_sql())
            oid, relkind = self._table(cur)
            walk = self._walk(cur, oid)
            predicate = self._predicate(cur)
            partitions = self._droppable(cur, oid)
            leaves = self._leaves(cur, oid, relkind, partitions)
            counts: t.Dict[Leaf, int] = {}
            for leaf in leaves:
                self._check_index(cur, leaf, predicate, walk)
                try:
                    counts[leaf] = self._count(cur, leaf, predicate)
                except psycopg.Error as exc:
                    raise RunbookError("counting the rows to purge in %s failed: %s" % (leaf.qualified, last_line(str(exc))))
            rows = sum(counts.values())
            matched = rows + sum(p.rows for p in partitions)
            if matched > opts.max_rows:
                raise RunbookError("%d rows of %s match, more than max_rows=%d: nothing was deleted; check the predicate, "
                                   "then raise max_rows" % (matched, opts.qualified, opts.max_rows), **self._result(matched, partitions))
            if self.task.check_mode or matched == 0:
                return self._planned(matched, rows, partitions)
            self._check_lag_visible(cur)
            for partition in partitions:
                if not self._drop(connection, partition):
                    break
            for leaf in leaves:
                if self.stopped_because or not counts[leaf]:
                    continue
                self._purge_leaf(connection, leaf, predicate, walk)
        finally:
            connection.close()
        result = self._result(matched, partitions)
        done = "deleted %d row(s) of %s in %d batch(es)" % (self.deleted, opts.qualified, self.batches)
        if self.dropped:
            done += " and dropped %d partition(s) (%s)" % (len(self.dropped), ", ".join(self.dropped))
        result["msg"] = done + (", then stopped: %s" % self.stopped_because if self.stopped_because else "")
        return result

    def _result(self, matched: int, partitions: t.Sequence[Partition]) -> Result:
        return {"changed": bool(self.deleted or self.dropped), "deleted": self.deleted, "batches": self.batches,
                "partitions_dropped": list(self.dropped), "stopped_because": self.stopped_because, "matched": matched,
                "remaining": max(0, matched - self.deleted - sum(p.rows for p in partitions if p.qualified in self.dropped)),
                "lag_pauses": self.lag_pauses, "duration_s": self.watch.elapsed}

    def _planned(self, matched: int, rows: int, partitions: t.Sequence[Partition]) -> Result:
        result = self._result(matched, partitions)
        result.update(changed=matched > 0, partitions_dropped=[p.qualified for p in partitions] if self.task.check_mode else [])
        if matched == 0:
            result["msg"] = "no row of %s matches: nothing to purge" % self.opts.qualified
            return result
        if self.opts.batch_size is None:
            batches = "in batches sized to take about %gs each" % self.opts.batch_duration
        else:
            batches = "in about %d batch(es) of at most %d" % (-(-rows // self.opts.batch_size), self.opts.batch_size)
        drops = ""
        if partitions:
            drops = " and drop %d partition(s) holding %d row(s) (%s)" % (
                len(partitions), matched - rows, ", ".join(p.qualified for p in partitions))
        result["msg"] = "would delete %d row(s) of %s %s%s" % (rows, self.opts.qualified, batches, drops)
        return result

    def _lock_timeout_sql(self) -> str:
        """For the whole session: every batch is one autocommit statement, every partition drop one transaction."""
        return "SET lock_timeout = '%dms'" % max(1, int(self.opts.lock_timeout * 1000))

    def _drop(self, connection: "psycopg.Connection[t.Any]", partition: Partition) -> bool:
        psycopg = import_psycopg()
        parent = "%s.%s" % (quote_ident(self.opts.schema), quote_ident(self.opts.table))
        child = "%s.%s" % (quote_ident(partition.schema), quote_ident(partition.name))
        try:
            with connection.transaction():
                cur = connection.cursor()
                cur.execute("ALTER TABLE %s DETACH PARTITION %s" % (parent, child))
                cur.execute("DROP TABLE %s" % child)
        except psycopg.errors.LockNotAvailable:
            self.stopped_because = "lock_timeout"
            self.task.warn("partition %s was not dropped: a lock on %s was not granted within lock_timeout"
                           % (partition.qualified, self.opts.qualified))
            return False
        except psycopg.Error as exc:
            raise RunbookError("dropping partition %s failed: %s" % (partition.qualified, last_line(str(exc))),
                               **self._result(0, []))
        self.dropped.append(partition.qualified)
        return True

    def _purge_leaf(self, connection: "psycopg.Connection[t.Any]", leaf: Leaf, predicate: str, walk: Walk) -> None:
        """Batches until ``leaf`` has no matching row, or a limit stops the run."""
        psycopg = import_psycopg()
        cur = connection.cursor()
        after: t.Optional[Position] = None
        while not self.stopped_because:
            if self.opts.max_duration is not None and self.watch.elapsed >= self.opts.max_duration:
                self.stopped_because = "max_duration"
                return
            if not self._lag_ok(connection):
                self.stopped_because = "replication_lag"
                return
            started = time.monotonic()
            try:
                count, upto = self._batch(cur, leaf, predicate, walk, after)
            except psycopg.errors.LockNotAvailable:
                self.stopped_because = "lock_timeout"
                self.task.warn("a batch on %s waited longer than lock_timeout for a lock; the run stopped after %d "
                               "batch(es), run it again to continue" % (leaf.qualified, self.batches))
                return
            except psycopg.Error as exc:
                raise RunbookError("batch %d on %s failed: %s" % (self.batches + 1, leaf.qualified, last_line(str(exc))),
                                   **self._result(self.deleted, []))
            if count:
                self.deleted += count
                self.batches += 1
            if upto is None:
                return
            after = upto
            if self.opts.batch_size is None:
                self.size = next_batch_size(self.size, time.monotonic() - started, self.opts.batch_duration)
            if self.opts.pause:
                time.sleep(self.opts.pause)

    def _batch(self, cur: "psycopg.Cursor[t.Any]", leaf: Leaf, predicate: str, walk: Walk,
               after: t.Optional[Position]) -> t.Tuple[int, t.Optional[Position]]:
        """One batch: probe where it ends, then delete up to there in one statement (its own transaction, under the
        session's lock_timeout; the predicate is judged again on rows changed meanwhile). Returns the rows deleted
        and the position reached, None when this was the last batch.

        The probe reads the keys of the batch's last row and of the next (an index-only scan when the predicate is
        on the key); when they differ the batch is every matching row up to that key, bounded by index conditions
        on the key alone. When they are equal the batch ends inside a run of equal keys: a second probe orders by
        (key, tie), which also reads the table and sorts, and the batch ends at that row."""
        conditions = [predicate] + walk.after(after)
        params = dict(self.params, runbook_limit=self.size, **Walk.values(after))
        cur.execute(self._probe_sql(leaf, conditions, walk.key, 2), params)
        keys = [row[0] for row in cur.fetchall()]
        if not keys:
            cur.execute(self._delete_sql(leaf, conditions), params)
            return max(0, cur.rowcount), None
        if len(keys) == 1 or keys[0] != keys[1] or walk.tie is None:
            params["runbook_upto_key"] = keys[0]
            cur.execute(self._delete_sql(leaf, conditions, "%s <= %%(runbook_upto_key)s::%s" % (walk.key, walk.key_type)),
                        params)
            return max(0, cur.rowcount), (keys[0], None)
        cur.execute(self._probe_sql(leaf, conditions, walk.both, 1), params)
        row = cur.fetchone()
        if row is None:  # the rows after it went meanwhile
            cur.execute(self._delete_sql(leaf, conditions), params)
            return max(0, cur.rowcount), None
        params.update(runbook_upto_key=row[0], runbook_upto_tie=row[1])
        cur.execute(self._delete_sql(leaf, conditions, "(%s) <= (%%(runbook_upto_key)s::%s, %%(runbook_upto_tie)s::%s)" % (
            walk.both, walk.key_type, walk.tie_type)), params)
        return max(0, cur.rowcount), (row[0], row[1])

    def _check_lag_visible(self, cur: "psycopg.Cursor[t.Any]") -> None:
        if self.opts.max_replication_lag is None:
            return
        cur.execute(_LAG_SQL)
        row = cur.fetchone()
        if row and row[0] and not row[1]:
            raise RunbookError("max_replication_lag is set but role %s may not read the replicas' replay positions; "
                               "GRANT pg_monitor TO %s" % (self.server.user, self.server.user))

    def _lag(self, connection: "psycopg.Connection[t.Any]") -> int:
        cur = connection.cursor()
        cur.execute(_LAG_SQL)
        row = cur.fetchone()
        return int(row[2]) if row and row[2] is not None else 0

    def _lag_ok(self, connection: "psycopg.Connection[t.Any]") -> bool:
        """True when every replica is within ``max_replication_lag``; waits up to ``lag_wait`` for them first."""
        limit = self.opts.max_replication_lag
        if limit is None:
            return True
        lag = self._lag(connection)
        if lag <= limit:
            return True
        self.lag_pauses += 1
        deadline = time.monotonic() + self.opts.lag_wait
        while time.monotonic() < deadline:
            time.sleep(min(LAG_POLL_S, max(0.0, deadline - time.monotonic())))
            lag = self._lag(connection)
            if lag <= limit:
                return True
        self.task.warn("replicas stayed %s behind (max_replication_lag %s) for %gs; the run stopped after %d batch(es)"
                       % (human_bytes(lag), human_bytes(limit), self.opts.lag_wait, self.batches))
        return False


def run_pg_purge(task: Task[PgPurgeOptions]) -> Result:
    """``pg_purge``: count what matches, refuse past ``max_rows``, then purge in batches (or, in check mode, plan)."""
    opts = task.options
    endpoint = open_endpoint(task, opts.connection)  # the one place this module decides where the server is
    return Purge(task, PgConnection(opts.connection, APPLICATION, endpoint=endpoint)).run()
