# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the PostgreSQL health and maintenance modules read about tables and indexes: one query for
every table's activity counters and bloat inputs, one for every index, and the bloat estimates
computed from them.

Bloat is an **estimate**: the expected size of a relation is computed from its row count
(``reltuples``) and the average column widths ANALYZE stored in ``pg_stats``, and compared with its
real page count. When those statistics are missing or stale (many rows changed since the last
ANALYZE), the estimate is ``None`` (unknown), never a number that looks trustworthy.

The estimation functions are pure (rows in, numbers out) and unit tested without a server.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing as t


if t.TYPE_CHECKING:  # pragma: no cover
    import datetime

    import psycopg

# A table whose rows changed by more than this share since its last ANALYZE has stale statistics.
STALE_MODIFIED_SHARE = 0.2
_PAGE_HEADER = 24
_BTREE_SPECIAL = 16
_TUPLE_HEADER = 23
_INDEX_TUPLE_HEADER = 8
_ITEM_POINTER = 4
_MAXALIGN = 8
_BTREE_DEFAULT_FILLFACTOR = 90

_TABLES_SQL = """
SELECT n.nspname, c.relname, c.relpages, c.reltuples::float8, pg_relation_size(c.oid), pg_total_relation_size(c.oid),
       coalesce(st.n_live_tup, 0), coalesce(st.n_dead_tup, 0), coalesce(st.n_mod_since_analyze, 0),
       greatest(st.last_vacuum, st.last_autovacuum), greatest(st.last_analyze, st.last_autoanalyze),
       (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       w.stat_cols, w.data_width, coalesce(w.has_nulls, false),
       coalesce((SELECT substring(o FROM 'fillfactor=(\\d+)')::int FROM unnest(c.reloptions) o
                  WHERE o LIKE 'fillfactor=%%'), 100),
       current_setting('block_size')::int
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_all_tables st ON st.relid = c.oid
  LEFT JOIN LATERAL (SELECT count(*) AS stat_cols, sum((1 - s.null_frac) * s.avg_width)::float8 AS data_width,
                            bool_or(s.null_frac > 0) AS has_nulls
                       FROM pg_stats s WHERE s.schemaname = n.nspname AND s.tablename = c.relname
                        AND NOT s.inherited) w ON true
 WHERE c.relkind IN ('r', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
 ORDER BY 1, 2
"""

_INDEXES_SQL = """
SELECT n.nspname, ic.relname, tc.relname, am.amname, i.indisvalid, i.indisready, ic.relpages, ic.reltuples::float8,
       pg_relation_size(ic.oid), i.indnatts, 0 = ANY(i.indkey::int2[]) OR i.indexprs IS NOT NULL,
       w.stat_cols, w.data_width,
       coalesce((SELECT substring(o FROM 'fillfactor=(\\d+)')::int FROM unnest(ic.reloptions) o
                  WHERE o LIKE 'fillfactor=%%'), 0),
       current_setting('block_size')::int, i.indisprimary OR i.indisunique
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_class tc ON tc.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = ic.relnamespace
  JOIN pg_am am ON am.oid = ic.relam
  LEFT JOIN LATERAL (SELECT count(*) AS stat_cols, sum((1 - s.null_frac) * s.avg_width)::float8 AS data_width
                       FROM pg_attribute a
                       JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = tc.relname
                                      AND s.attname = a.attname AND NOT s.inherited
                      WHERE a.attrelid = tc.oid AND a.attnum = ANY(i.indkey::int2[])) w ON true
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
 ORDER BY 1, 2
"""


def _align(size: float) -> float:
    return math.ceil(size / _MAXALIGN) * _MAXALIGN


@dataclasses.dataclass(frozen=True)
class TableStats:
    """One table's counters (``pg_stat_all_tables``) and size, with its estimated bloat."""

    schema: str
    name: str
    pages: int
    reltuples: float
    size: int
    total_size: int
    live: int
    dead: int
    modified_since_analyze: int
    last_vacuum: t.Optional["datetime.datetime"]
    last_analyze: t.Optional["datetime.datetime"]
    columns: int
    stat_columns: int
    data_width: t.Optional[float]
    has_nulls: bool
    fillfactor: int
    block_size: int

    @property
    def qualified(self) -> str:
        return "%s.%s" % (self.schema, self.name)

    @property
    def dead_ratio(self) -> float:
        """Dead rows as a share of all rows (0 for an empty table)."""
        total = self.live + self.dead
        return self.dead / total if total else 0.0

    @property
    def stats_stale(self) -> bool:
        """No usable ANALYZE statistics: never analyzed, columns without statistics, or many changes since."""
        if self.last_analyze is None or self.reltuples < 0 or self.data_width is None:
            return True
        if self.stat_columns < self.columns:
            return True
        return self.modified_since_analyze > STALE_MODIFIED_SHARE * max(self.reltuples, 1.0)

    @property
    def estimated_bloat(self) -> t.Optional[int]:
        """Bytes beyond what the rows need (an estimate), or None when the statistics cannot tell."""
        if self.stats_stale or self.data_width is None:
            return None
        header = _TUPLE_HEADER + (math.ceil(self.columns / 8) if self.has_nulls else 0)
        tuple_size = _align(header) + _align(self.data_width) + _ITEM_POINTER
        usable = (self.block_size - _PAGE_HEADER) * self.fillfactor / 100.0
        per_page = max(1, int(usable // tuple_size))
        expected = math.ceil(max(self.reltuples, 0.0) / per_page)
        return max(0, self.pages - expected) * self.block_size


@dataclasses.dataclass(frozen=True)
class IndexStats:
    """One index: validity, size and estimated bloat (B-tree only)."""

    schema: str
    name: str
    table: str
    method: str
    valid: bool
    ready: bool
    pages: int
    reltuples: float
    size: int
    columns: int
    has_expressions: bool
    stat_columns: int
    data_width: t.Optional[float]
    fillfactor: int
    block_size: int
    unique: bool

    @property
    def qualified(self) -> str:
        return "%s.%s" % (self.schema, self.name)

    @property
    def qualified_table(self) -> str:
        return "%s.%s" % (self.schema, self.table)

    @property
    def leftover_of_reindex(self) -> bool:
        """An index REINDEX CONCURRENTLY left behind when it was interrupted (``<name>_ccnew``, ``_ccold``)."""
        return not self.valid and re.search(r"_cc(new|old)[0-9]*$", self.name) is not None

    @property
    def estimated_bloat(self) -> t.Optional[int]:
        """Bytes beyond what the entries need (B-tree, an estimate), None when it cannot be estimated."""
        if (self.method != "btree" or not self.valid or self.has_expressions or self.data_width is None
                or self.stat_columns < self.columns or self.reltuples < 0):
            return None
        entry = _align(_INDEX_TUPLE_HEADER + self.data_width) + _ITEM_POINTER
        fillfactor = self.fillfactor or _BTREE_DEFAULT_FILLFACTOR
        usable = (self.block_size - _PAGE_HEADER - _BTREE_SPECIAL) * fillfactor / 100.0
        per_page = max(1, int(usable // entry))
        leaves = math.ceil(max(self.reltuples, 0.0) / per_page)
        # the meta page, plus roughly one inner page per few hundred leaves
        expected = 1 + leaves + math.ceil(leaves / max(per_page, 1))
        return max(0, self.pages - expected) * self.block_size


def read_tables(cur: "psycopg.Cursor[t.Any]") -> t.List[TableStats]:
    """Every user table and materialized view of the connected database (one query)."""
    cur.execute(_TABLES_SQL)
    return [TableStats(row[0], row[1], int(row[2]), float(row[3]), int(row[4]), int(row[5]), int(row[6]), int(row[7]),
                       int(row[8]), row[9], row[10], int(row[11]), int(row[12] or 0),
                       None if row[13] is None else float(row[13]), bool(row[14]), int(row[15]), int(row[16]))
            for row in cur.fetchall()]


def read_indexes(cur: "psycopg.Cursor[t.Any]") -> t.List[IndexStats]:
    """Every user index of the connected database (one query)."""
    cur.execute(_INDEXES_SQL)
    return [IndexStats(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]), int(row[6]), float(row[7]),
                       int(row[8]), int(row[9]), bool(row[10]), int(row[11] or 0),
                       None if row[12] is None else float(row[12]), int(row[13]), int(row[14]), bool(row[15]))
            for row in cur.fetchall()]
