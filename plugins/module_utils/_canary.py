# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``data_canary``: a timestamped row (PostgreSQL) or key (Redis) written into the data right before
a backup, and read back from restored data, so a drill measures its recovery point from the data
itself rather than from the backup's own time.

The canary's time is the data store's own clock (``clock_timestamp()``, Redis ``TIME``), as any other
row's ``created_at`` would be; its random token tells one canary from the next. Reading never changes
anything; with ``timestamp_column`` it also returns ``max()`` of a declared column, every identifier
quoted by psycopg (never SQL text from the user).

One module serves both stores, so the connection options of both are merged: where the two define
the same option differently (``login_host``, ``login_port``, ``login_user``, ``login_password``,
``connect_timeout``), the merged option has neither default nor environment fallback, and the chosen
service's own definition fills them in (:func:`service_params`): PostgreSQL's port is 5432 and its
``PGPASSWORD`` applies, Redis's port is 6379 and its ``REDIS_PASSWORD`` applies, never the other way.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
import typing as t

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, utcnow)
from ansible_collections.runbook.ops.plugins.module_utils._names import check_params, int_in, no_control, pg_name, shown
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (
    PgConnection, PgConnectionOptions, import_psycopg, last_line, open_endpoint, postgres_connection_argspec)
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    RedisConnection, RedisConnectionOptions, RedisReplyError, reach, redis_connection_argspec)

SERVICES = ("postgresql", "redis")
STATES = ("written", "read")
APPLICATION = "data_canary"
# Types max() of a column may have for it to be a data time; a naive timestamp is read as UTC.
TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
MAX_REDIS_DB = 1 << 20
Json = t.Dict[str, t.Any]


# --------------------------------------------------------------------------- options

def _service_specs() -> t.Dict[str, Json]:
    return {"postgresql": postgres_connection_argspec(), "redis": redis_connection_argspec()}


def shared_options() -> t.List[str]:
    """Options both services define, differently (default, type or environment fallback)."""
    specs = _service_specs()
    return sorted(name for name in specs["postgresql"]
                  if name in specs["redis"] and specs["postgresql"][name] != specs["redis"][name])


def canary_connection_argspec() -> Json:
    """Both services' connection options in one spec (see the module docstring for the shared ones)."""
    specs = _service_specs()
    merged: Json = dict(specs["postgresql"])
    for name, option in specs["redis"].items():
        merged.setdefault(name, option)
    for name in shared_options():
        pg, redis = specs["postgresql"][name], specs["redis"][name]
        merged[name] = {"type": "float" if "float" in (pg["type"], redis["type"]) else pg["type"]}
        aliases = list(pg.get("aliases", [])) + [a for a in redis.get("aliases", []) if a not in pg.get("aliases", [])]
        if aliases:
            merged[name]["aliases"] = aliases
        if pg.get("no_log") or redis.get("no_log"):
            merged[name]["no_log"] = True
    return merged


def service_params(params: t.Mapping[str, t.Any], service: str) -> Json:
    """``params`` with the shared options as ``service`` defines them: its default or environment
    fallback where the task left them unset, its type for the values given."""
    own = _service_specs()[service]
    spec = {name: {k: v for k, v in own[name].items() if k != "aliases"} for name in shared_options()}
    given = {name: params[name] for name in spec if params.get(name) is not None}
    checked = ArgumentSpecValidator(spec).validate(given)
    if checked.error_messages:
        raise RunbookError("%s connection options: %s" % (service, "; ".join(checked.error_messages)))
    merged = dict(params)
    merged.update(checked.validated_parameters)
    return merged


@dataclasses.dataclass(frozen=True)
class TimestampColumn:
    schema: str
    table: str
    column: str

    def describe(self) -> str:
        return '"%s"."%s"."%s"' % (self.schema, self.table, self.column)


@dataclasses.dataclass(frozen=True)
class CanaryOptions:
    service: str
    state: str
    name: str
    db: str
    schema: str
    table: str
    redis_db: int
    key: str
    timestamp_column: t.Optional[TimestampColumn]
    postgresql: t.Optional[PgConnectionOptions]
    redis: t.Optional[RedisConnectionOptions]

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "CanaryOptions":
        service = params["service"]
        own = service_params(params, service)
        # Identifiers are quoted where they are used: only what PostgreSQL itself cannot name is refused.
        check_params(params, dict(db=pg_name, schema=pg_name, table=pg_name, name=no_control, key=no_control))
        int_in("redis_db", params["redis_db"], 0, MAX_REDIS_DB)
        column = params["timestamp_column"]
        if column is not None and service != "postgresql":
            raise RunbookError("timestamp_column is read from PostgreSQL only; service is %s" % service)
        return options_from(
            cls, params,
            timestamp_column=TimestampColumn(**{k: pg_name("timestamp_column.%s" % k, column[k])
                                                for k in ("schema", "table", "column")}) if column else None,
            postgresql=PgConnectionOptions.from_params(own) if service == "postgresql" else None,
            redis=RedisConnectionOptions.from_params(own) if service == "redis" else None)


# --------------------------------------------------------------------------- what a canary holds

@dataclasses.dataclass(frozen=True)
class Canary:
    written_at: datetime.datetime
    token: str

    def facts(self, now: t.Optional[datetime.datetime] = None) -> Json:
        facts: Json = {"found": True, "written_at": isoformat(self.written_at), "token": self.token}
        if now is not None:
            facts["age_seconds"] = round((now - self.written_at).total_seconds(), 3)
        return facts


NOT_FOUND: Json = {"found": False, "written_at": None, "token": None, "age_seconds": None}


def as_utc(value: t.Any, what: str) -> datetime.datetime:
    """A data time from the server: aware datetimes as they are, naive ones (and dates) as UTC."""
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.timezone.utc) if value.tzinfo is None else value.astimezone(datetime.timezone.utc)
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.timezone.utc)
    raise RunbookError("%s is %s, not a time" % (what, shown(value)))


# --------------------------------------------------------------------------- PostgreSQL

def server_said(exc: BaseException) -> str:
    """The server's own sentence for an error (``column "x" does not exist``), not the echo of the query."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    return str(primary) if primary else last_line(str(exc))


class PgCanary:
    """The canary table of one database."""

    def __init__(self, conn: PgConnection, opts: CanaryOptions) -> None:
        self.conn = conn
        self.opts = opts
        self.psycopg = import_psycopg()
        self.where = 'database "%s" on %s' % (opts.db, conn.where)
        self.table_name = '"%s"."%s"' % (opts.schema, opts.table)

    def _table(self) -> t.Any:
        from psycopg import sql
        return sql.Identifier(self.opts.schema, self.opts.table)

    def _fail(self, what: str, exc: BaseException) -> RunbookError:
        return RunbookError("%s %s in %s failed: %s" % (what, self.table_name, self.where, server_said(exc)))

    def read(self, connection: t.Any) -> t.Optional[Canary]:
        from psycopg import sql
        with connection.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (sql.Identifier(self.opts.schema, self.opts.table).as_string(connection),))
            if not cur.fetchone()[0]:
                return None
            try:
                cur.execute(sql.SQL("SELECT written_at, token FROM {} WHERE name = %s").format(self._table()),
                            (self.opts.name,))
            except self.psycopg.Error as exc:
                raise self._fail("reading the canary from", exc)
            row = cur.fetchone()
        return None if row is None else Canary(as_utc(row[0], "written_at"), str(row[1]))

    def now(self, connection: t.Any) -> datetime.datetime:
        with connection.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            return as_utc(cur.fetchone()[0], "clock_timestamp()")

    def write(self, connection: t.Any, token: str) -> Canary:
        from psycopg import sql
        table = self._table()
        try:
            with connection.transaction(), connection.cursor() as cur:
                cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, "
                                    "written_at timestamptz NOT NULL, token text NOT NULL)").format(table))
                cur.execute(sql.SQL("INSERT INTO {} (name, written_at, token) VALUES (%s, clock_timestamp(), %s) "
                                    "ON CONFLICT (name) DO UPDATE SET written_at = EXCLUDED.written_at, "
                                    "token = EXCLUDED.token RETURNING written_at").format(table),
                            (self.opts.name, token))
                written = cur.fetchone()[0]
        except self.psycopg.Error as exc:
            raise self._fail("writing the canary into", exc)
        return Canary(as_utc(written, "written_at"), token)

    def newest(self, connection: t.Any, column: TimestampColumn) -> t.Optional[datetime.datetime]:
        """``max(column)``: the newest data time of a declared column (None when the table is empty)."""
        from psycopg import sql
        query = sql.SQL("SELECT max({col}), pg_typeof(max({col}))::text FROM {table}").format(
            col=sql.Identifier(column.column), table=sql.Identifier(column.schema, column.table))
        try:
            with connection.cursor() as cur:
                cur.execute(query)
                value, kind = cur.fetchone()
        except self.psycopg.Error as exc:
            raise RunbookError("reading max(%s) in %s failed: %s" % (column.describe(), self.where, server_said(exc)))
        if kind not in TIME_TYPES:
            raise RunbookError("timestamp_column %s is of type %s, not a timestamp or date" % (column.describe(), kind))
        return None if value is None else as_utc(value, "max(%s)" % column.describe())


def pg_canary(task: Task[CanaryOptions]) -> Result:
    opts = task.options
    conn_opts = t.cast(PgConnectionOptions, opts.postgresql)
    canary = PgCanary(PgConnection(conn_opts, APPLICATION, endpoint=open_endpoint(task, conn_opts)), opts)
    connection = canary.conn.connect(opts.db)
    try:
        where = "table %s of %s" % (canary.table_name, canary.where)
        if opts.state == "read":
            result = read_result(canary.read(connection), canary.now(connection), where)
            if opts.timestamp_column is not None:
                newest = canary.newest(connection, opts.timestamp_column)
                result["newest_at"] = isoformat(newest) if newest else None
                result["msg"] += "; newest %s is %s" % (opts.timestamp_column.describe(), result["newest_at"] or "none (empty table)")
            return result
        before = canary.read(connection) if task.diff else None
        written = None if task.check_mode else canary.write(connection, secrets.token_hex(16))
        return written_result(task, written, before, where)
    finally:
        connection.close()


# --------------------------------------------------------------------------- Redis

class RedisCanary:
    def __init__(self, conn: RedisConnection, opts: CanaryOptions) -> None:
        self.conn = conn
        self.opts = opts
        self.where = "key %s in db %d of Redis at %s" % (shown(opts.key), opts.redis_db, conn.where)

    def select(self) -> None:
        if self.opts.redis_db:
            try:
                self.conn.call("SELECT", self.opts.redis_db)
            except RedisReplyError as exc:
                raise RunbookError("selecting db %d on Redis at %s failed: %s" % (self.opts.redis_db, self.conn.where, exc.text))

    def now(self, task: Task[CanaryOptions]) -> datetime.datetime:
        """The server's clock (TIME), as the data's own time; this host's when TIME is not allowed."""
        try:
            reply = self.conn.call("TIME")
            seconds, micros = int(reply[0]), int(reply[1])
        except (RedisReplyError, TypeError, ValueError, IndexError) as exc:
            task.warn("Redis at %s did not answer TIME (%s): the canary uses this host's clock"
                      % (self.conn.where, getattr(exc, "text", exc)))
            return utcnow()
        return datetime.datetime.fromtimestamp(seconds + micros / 1e6, datetime.timezone.utc)

    def read(self) -> t.Optional[Canary]:
        try:
            value = self.conn.call("GET", self.opts.key)
        except RedisReplyError as exc:
            raise RunbookError("reading the canary %s failed: %s" % (self.where, exc.text))
        if value is None:
            return None
        try:
            data = json.loads(value)
            return Canary(as_utc(datetime.datetime.fromisoformat(str(data["written_at"]).replace("Z", "+00:00")),
                                 "written_at"), str(data["token"]))
        except (ValueError, KeyError, TypeError):
            raise RunbookError("%s holds something that is not a canary (JSON with written_at and token); "
                               "choose another key" % self.where)

    def write(self, at: datetime.datetime, token: str) -> Canary:
        canary = Canary(at, token)
        value = json.dumps({"written_at": at.isoformat().replace("+00:00", "Z"), "token": token})
        try:
            self.conn.call("SET", self.opts.key, value)  # a plain SET also drops any TTL the key had
        except RedisReplyError as exc:
            raise RunbookError("writing the canary %s failed: %s" % (self.where, exc.text))
        return canary


def redis_canary(task: Task[CanaryOptions]) -> Result:
    opts = task.options
    connection = task.adopt(reach(task, t.cast(RedisConnectionOptions, opts.redis)).connect())
    canary = RedisCanary(connection, opts)
    canary.select()
    if opts.state == "read":
        return read_result(canary.read(), canary.now(task), canary.where)
    before = canary.read() if task.diff else None
    if task.check_mode:
        return written_result(task, None, before, canary.where)
    return written_result(task, canary.write(canary.now(task), secrets.token_hex(16)), before, canary.where)


# --------------------------------------------------------------------------- results

def read_result(found: t.Optional[Canary], now: datetime.datetime, where: str) -> Result:
    if found is None:
        return dict(NOT_FOUND, changed=False, msg="no canary in %s" % where)
    result: Result = dict(found.facts(now), changed=False)
    result["msg"] = "canary in %s written at %s (%s ago)" % (where, result["written_at"], _age(result["age_seconds"]))
    return result


def written_result(task: Task[CanaryOptions], written: t.Optional[Canary], before: t.Optional[Canary],
                   where: str) -> Result:
    result: Result = {"changed": True, "written_at": None, "token": None}
    if written is not None:
        result.update(written_at=isoformat(written.written_at), token=written.token)
        result["msg"] = "canary written into %s at %s" % (where, result["written_at"])
    else:
        result["msg"] = "would write the canary into %s" % where
    if task.diff:
        result["diff"] = {"before": before.facts() if before else {},
                          "after": {k: result[k] for k in ("written_at", "token")}}
    return result


def _age(seconds: t.Optional[float]) -> str:
    if seconds is None:
        return "unknown"
    return "%.0f s" % seconds if abs(seconds) < 120 else "%.1f min" % (seconds / 60.0) if abs(seconds) < 7200 \
        else "%.1f h" % (seconds / 3600.0)


def run_data_canary(task: Task[CanaryOptions]) -> Result:
    result = pg_canary(task) if task.options.service == "postgresql" else redis_canary(task)
    result["service"] = task.options.service
    return result
