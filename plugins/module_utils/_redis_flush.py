# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guarded flush of ``redis_snapshot`` (``state=flushed``): what is flushed, the protected-key
check and the flush itself. The flow around them (snapshot, verify, then flush) is in ``_redis_snapshot``.

- :class:`FlushPlan`: ``FLUSHDB`` of one database or ``FLUSHALL``, with the keys each database held.
- :func:`protected_keys`: keys matching ``protected_patterns`` (Redis glob patterns), counted with
  ``SCAN ... MATCH`` (never ``KEYS``, which blocks the server); key names never leave the module, as
  session and rate-limit keys often embed tokens or client addresses.
- :func:`run_flush`: the command, through ``command_names`` like every other one.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._names import shown
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    RedisConnection, RedisReplyError, UnknownCommand, db_number, permission_error)

# The rights of the flush itself; the snapshot's own (per method) come on top.
FLUSH_RIGHTS = {"FLUSHDB": "+select +scan +flushdb", "FLUSHALL": "+select +scan +flushall"}
MAX_DB = 1 << 20  # far above any real "databases" setting; SELECT refuses what the server lacks
SCAN_COUNT = 1000

ProtectedKeys = t.Dict[str, t.Dict[str, int]]
"""``{"db0": {"session:*": 12}}``: matching keys per database and pattern (only non-zero counts)."""


def protected_pattern(what: str, value: t.Any) -> str:
    """A Redis glob pattern: printable text, not empty (an empty MATCH would match nothing)."""
    if not isinstance(value, str) or not value or not value.isprintable():
        raise RunbookError("%s %s is not a key pattern (printable text such as session:*)" % (what, shown(value)))
    return value


@dataclasses.dataclass(frozen=True)
class FlushPlan:
    """What a flush empties: ``db`` with ``FLUSHDB``, or every database (``db`` None) with ``FLUSHALL``."""

    db: t.Optional[int]
    keys_before: t.Dict[str, int]

    @property
    def command(self) -> str:
        return "FLUSHALL" if self.db is None else "FLUSHDB"

    @property
    def databases(self) -> t.List[int]:
        """The databases to check for protected keys: those holding keys (all of them for FLUSHALL)."""
        return [db_number(db) for db, keys in self.keys_before.items() if keys]

    @property
    def what(self) -> str:
        return "every database (FLUSHALL)" if self.db is None else "db%d (FLUSHDB)" % self.db

    @classmethod
    def of(cls, keys_per_db: t.Mapping[str, int], db: t.Optional[int]) -> "FlushPlan":
        """The plan for a server whose ``INFO keyspace`` gave ``keys_per_db``."""
        if db is None:
            return cls(None, {name: count for name, count in keys_per_db.items() if count})
        name = "db%d" % db
        return cls(db, {name: keys_per_db.get(name, 0)})

    def result(self, protected: ProtectedKeys, done: bool) -> t.Dict[str, t.Any]:
        """The ``flushed`` result field."""
        return {"command": self.command, "db": self.db, "keys_before": dict(self.keys_before),
                "protected_keys": protected, "done": done}


def _select(conn: RedisConnection, db: int, needs: str) -> None:
    try:
        conn.call("SELECT", db)
    except UnknownCommand as exc:
        raise RunbookError(exc.text)
    except RedisReplyError as exc:
        if exc.code == "NOPERM":
            raise permission_error(conn, exc, "SELECT", needs)
        raise RunbookError("SELECT %d on Redis at %s failed: %s" % (db, conn.where, exc.text))


def _count_matches(conn: RedisConnection, pattern: str, needs: str) -> int:
    count = 0
    cursor: t.Any = b"0"
    while True:
        try:
            cursor, keys = conn.call("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
        except UnknownCommand as exc:
            raise RunbookError(exc.text)
        except RedisReplyError as exc:
            if exc.code == "NOPERM":
                raise permission_error(conn, exc, "SCAN", needs)
            raise RunbookError("SCAN on Redis at %s failed: %s" % (conn.where, exc.text))
        count += len(keys)
        if cursor in (b"0", 0, "0"):
            return count


def protected_keys(conn: RedisConnection, plan: FlushPlan, patterns: t.Sequence[str]) -> ProtectedKeys:
    """Keys of the planned databases matching ``patterns``, counted per database and pattern.

    One incremental SCAN per pattern and database: the server is never blocked, only matching keys
    cross the wire. A key matching two patterns is counted under both."""
    needs = FLUSH_RIGHTS[plan.command]
    found: ProtectedKeys = {}
    for db in plan.databases:
        _select(conn, db, needs)
        counts = {pattern: _count_matches(conn, pattern, needs) for pattern in patterns}
        counts = {pattern: count for pattern, count in counts.items() if count}
        if counts:
            found["db%d" % db] = counts
    return found


def describe_protected(found: ProtectedKeys) -> str:
    """``db0: 12 keys matching session:*, 3 matching rl:*; db2: ...`` (counts only, never key names)."""
    parts = []
    for db in sorted(found, key=db_number):
        matches = ["%d matching %s" % (count, pattern) for pattern, count in found[db].items()]
        parts.append("%s: %s" % (db, ", ".join(matches)))
    return "; ".join(parts)


def run_flush(conn: RedisConnection, plan: FlushPlan) -> None:
    """``FLUSHDB`` of ``plan.db`` (after SELECT) or ``FLUSHALL``, synchronously (the keys are gone when it returns)."""
    needs = FLUSH_RIGHTS[plan.command]
    if plan.db is not None:
        _select(conn, plan.db, needs)
    try:
        conn.call(plan.command, "SYNC")
    except UnknownCommand as exc:
        raise RunbookError(exc.text)
    except RedisReplyError as exc:
        if exc.code == "NOPERM":
            raise permission_error(conn, exc, plan.command, needs)
        raise RunbookError("%s on Redis at %s failed: %s" % (plan.command, conn.where, exc.text))
