# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks behind ``runbook.ops.redis_health``: read a Redis server with a handful of commands (one
``INFO``, the slowlog, a few ``CONFIG GET`` and ``ACL`` calls) and judge what was read.

Reading and judging are separate: the ``judge_*`` functions are pure (INFO fields in, findings out) and
unit tested without a server; :class:`_Scan` does the reading and turns a command the ACL user may not
run (or a disabled one) into ``unknown`` findings naming the missing permission, never a failure.

Counters that only grow (evictions, rejected connections, keyspace hits, ACL denials, slowlog ids) are
judged over an interval: since the run whose ``counters`` are given as ``previous`` (same server run),
else since the server started.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task, options_from
from ansible_collections.runbook.ops.plugins.module_utils._findings import (
    FAIL_ON_CHOICES, Finding, Limit, finding, judged, limits_from)
from ansible_collections.runbook.ops.plugins.module_utils._names import human_bytes, human_seconds, number, shown
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    Info, RedisConnection, RedisConnectionOptions, RedisReplyError, UnknownCommand, info_int, parse_info, reach,
    redis_connection_argspec)

CHECKS = ("reachability", "role", "memory", "evictions", "fragmentation", "connections", "rejected_connections",
          "blocked_clients", "rdb_save", "aof", "fork_time", "replication", "slowlog", "hit_ratio", "acl_denials",
          "risky_config")
# Checks judged from INFO alone.
INFO_CHECKS = ("role", "memory", "evictions", "fragmentation", "connections", "rejected_connections",
               "blocked_clients", "rdb_save", "aof", "fork_time", "replication", "hit_ratio")
INFO_RIGHTS = "+info"
SLOWLOG_RIGHTS = "+slowlog"
ACL_LOG_RIGHTS = "+acl|log"
RISKY_CONFIG_RIGHTS = "+config|get +acl|getuser +acl|dryrun"
ROLES = ("any", "master", "replica")
SLOWLOG_ENTRIES = 128
ACL_LOG_ENTRIES = 128
# Below this much used memory the fragmentation ratio says nothing (an empty server shows 5 to 10).
FRAGMENTATION_MIN_USED = 100 * 1024 * 1024
# Keyspace lookups needed in the interval before the hit ratio is judged.
MIN_LOOKUPS = 1000
# Commands whose second word is a subcommand keyword, never data: shown as "CONFIG SET".
_CONTAINER_COMMANDS = frozenset(("ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY",
                                 "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO"))
# What the default user should not be able to run on a server others can reach (ACL DRYRUN arguments).
DANGEROUS_COMMANDS: t.Tuple[t.Tuple[str, ...], ...] = (
    ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "dir", "/tmp"), ("KEYS", "*"), ("SHUTDOWN",),
    ("DEBUG", "SLEEP", "0"), ("MODULE", "LOAD", "/dev/null"))
COUNTERS = ("evicted_keys", "expired_keys", "rejected_connections", "keyspace_hits", "keyspace_misses")
_ACL_DENIAL_FIELDS = ("acl_access_denied_auth", "acl_access_denied_cmd", "acl_access_denied_key",
                      "acl_access_denied_channel")

# name: (kind, warning, critical); the argument spec's defaults and the documentation's table.
THRESHOLD_DEFAULTS: t.Dict[str, t.Tuple[str, t.Any, t.Any]] = dict(
    memory=("float", 80, 90),
    evictions=("float", 1, None),
    fragmentation=("float", 1.5, 3),
    connections=("float", 80, 95),
    rejected_connections=("float", 1, None),
    blocked_clients=("float", None, None),
    rdb_age=("raw", "2h", "1d"),
    fork_time=("raw", "500ms", "2s"),
    replication_lag_bytes=("raw", "1MB", "100MB"),
    replication_lag=("raw", "10s", "60s"),
    link_down=("raw", "0s", "60s"),
    slow_command=("raw", "10ms", "1s"),
    hit_ratio=("float", None, None),
    acl_denials=("float", 1, None),
)
DURATIONS = ("rdb_age", "fork_time", "replication_lag", "link_down", "slow_command")
SIZES = ("replication_lag_bytes",)
LOWER_IS_WORSE = ("hit_ratio",)


def redis_health_argspec() -> t.Dict[str, t.Any]:
    """Every option of the module: the Redis connection and the checks."""
    thresholds: t.Dict[str, t.Any] = {}
    for name, (kind, warning, critical) in THRESHOLD_DEFAULTS.items():
        thresholds["%s_warning" % name] = dict(type=kind, default=warning)
        thresholds["%s_critical" % name] = dict(type=kind, default=critical)
    spec = redis_connection_argspec()
    spec.update(
        checks=dict(type="list", elements="str", choices=list(CHECKS), default=list(CHECKS)),
        expected_role=dict(type="str", choices=list(ROLES), default="any"),
        previous=dict(type="dict"),
        fail_on=dict(type="str", choices=list(FAIL_ON_CHOICES), default="never"),
        thresholds=dict(type="dict", default={}, apply_defaults=True, options=thresholds),
    )
    return spec


# --------------------------------------------------------------------------- options

def thresholds_from(given: t.Mapping[str, t.Any]) -> t.Dict[str, Limit]:
    """Each measure's levels (durations in seconds, sizes in bytes); critical may not be milder than warning."""
    kinds = {name: "duration" if name in DURATIONS else "size" if name in SIZES else "number"
             for name in THRESHOLD_DEFAULTS}
    return limits_from(given, kinds, LOWER_IS_WORSE)


@dataclasses.dataclass(frozen=True)
class Previous:
    """The ``counters`` of an earlier run: the start of the interval of the counter checks."""

    run_id: str
    uptime_s: float
    counters: t.Mapping[str, int]
    acl_denials: t.Optional[int]
    slowlog_last_id: t.Optional[int]

    @classmethod
    def from_option(cls, value: t.Optional[t.Mapping[str, t.Any]]) -> t.Optional["Previous"]:
        if not value:
            return None

        def count(key: str, required: bool = True) -> t.Optional[int]:
            item = value.get(key)
            if item is None and not required:
                return None
            if isinstance(item, bool) or not isinstance(item, int) or item < -1:
                raise RunbookError("previous.%s must be a counter (an integer) from the counters of an earlier run, "
                                   "not %s" % (key, shown(item)))
            return item

        run_id = value.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise RunbookError("previous must be the counters returned by an earlier run (previous.run_id is %s)"
                               % shown(run_id))
        uptime = number("previous.uptime_s", value.get("uptime_s"), 0.0)
        return cls(run_id, uptime, {key: t.cast(int, count(key)) for key in COUNTERS},
                   count("acl_denials", False), count("slowlog_last_id", False))


@dataclasses.dataclass(frozen=True)
class RedisHealthOptions:
    """What ``redis_health`` checks and when its verdict fails the task."""

    connection: RedisConnectionOptions
    checks: t.List[str]
    expected_role: str
    previous: t.Optional[Previous]
    thresholds: t.Mapping[str, Limit]
    fail_on: str

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RedisHealthOptions":
        return options_from(cls, params, connection=RedisConnectionOptions.from_params(params),
                            checks=list(dict.fromkeys(params["checks"])),
                            previous=Previous.from_option(params["previous"]),
                            thresholds=thresholds_from(params["thresholds"]))


# --------------------------------------------------------------------------- judging (pure)

def _pct(value: float) -> str:
    return "%.1f%%" % value


def _human(seconds: float) -> str:
    if seconds < 1:
        return "%dms" % round(seconds * 1000)
    return human_seconds(float(round(seconds)))


def ok_finding(check: str, obj: str, message: str, **details: t.Any) -> Finding:
    return finding("ok", check, obj, message, details)


def unknown_finding(check: str, obj: str, why: str) -> Finding:
    return finding("unknown", check, obj, "%s could not be checked: %s" % (check, why))


def not_allowed(conn: RedisConnection, exc: RedisReplyError, rights: str) -> str:
    """Why a check could not run, naming the permission or the ``command_names`` option."""
    if isinstance(exc, UnknownCommand):
        return exc.text
    if exc.code == "NOPERM":
        who = "user %r" % conn.user if conn.user else "the default user"
        return "%s may not run it; the ACL must grant %s (server said: %s)" % (who, rights, exc.text)
    return "Redis at %s answered: %s" % (conn.where, exc.text)


@dataclasses.dataclass(frozen=True)
class Interval:
    """Where the counter checks start: ``since`` is ``previous run`` or ``server start``."""

    seconds: float
    since: str
    deltas: t.Mapping[str, int]


def interval_of(info: Info, previous: t.Optional[Previous]) -> Interval:
    uptime = float(info_int(info, "uptime_in_seconds"))
    totals = {key: info_int(info, key) for key in COUNTERS}
    if previous is not None and previous.run_id == info.get("run_id") and previous.uptime_s <= uptime:
        deltas = {key: max(0, totals[key] - previous.counters[key]) for key in COUNTERS}
        return Interval(uptime - previous.uptime_s, "previous run", deltas)
    return Interval(uptime, "server start", totals)


def _per_second(count: int, interval: Interval) -> float:
    return count / interval.seconds if interval.seconds > 0 else float(count)


def judge_role(info: Info, expected: str, where: str) -> Finding:
    role = "replica" if info.get("role") == "slave" else str(info.get("role"))
    if role == "replica":
        text = "replica of %s:%s" % (info.get("master_host"), info.get("master_port"))
    else:
        text = "%s with %d connected replica(s)" % (role, info_int(info, "connected_slaves"))
    details = {"role": role, "expected_role": expected, "mode": info.get("redis_mode")}
    if expected != "any" and role != expected:
        return finding("critical", "role", where, "%s, but a %s was expected (a failover?)" % (text, expected), details)
    return ok_finding("role", where, text, **details)


def judge_memory(info: Info, container_limit: t.Optional[int], limit: Limit, where: str) -> Finding:
    """Used memory against ``maxmemory`` read with the eviction policy, else against the container's limit.
    Host memory is never the measure: in a container it is not what the kernel enforces."""
    used = info_int(info, "used_memory")
    maxmemory = info_int(info, "maxmemory")
    policy = str(info.get("maxmemory_policy", "noeviction"))
    details: t.Dict[str, t.Any] = {"used_memory": used, "maxmemory": maxmemory, "maxmemory_policy": policy,
                                   "container_limit": container_limit}
    if maxmemory > 0:
        share = 100.0 * used / maxmemory
        severity = limit.grade(share)
        text = "%s used of maxmemory %s (%s), policy %s" % (human_bytes(used), human_bytes(maxmemory), _pct(share), policy)
        if policy == "noeviction":
            text += ": at the limit every write fails with OOM"
        elif policy.startswith("volatile-"):
            keyspace: t.Dict[str, t.Dict[str, int]] = info.get("keyspace", {})
            expiring = sum(db.get("expires", 0) for db in keyspace.values())
            keys = sum(db.get("keys", 0) for db in keyspace.values())
            text += ": only the %d of %d keys with a TTL can be evicted, writes fail with OOM when none is left" % (
                expiring, keys)
        else:
            # allkeys-*: reaching the limit is how a cache works; evictions are judged by their own check.
            severity = "info" if severity != "ok" else "ok"
            text += ": keys are evicted at the limit (see the evictions check)"
        details["percent"] = round(share, 1)
        return finding(severity, "memory", where, text, details)
    if container_limit:
        share = 100.0 * used / container_limit
        severity = limit.grade(share)
        text = ("%s used, no maxmemory set: %s of the container's memory limit %s, where the kernel kills Redis "
                "instead of refusing writes; set maxmemory below it" % (human_bytes(used), _pct(share),
                                                                        human_bytes(container_limit)))
        details["percent"] = round(share, 1)
        return finding("info" if severity == "ok" else severity, "memory", where, text, details)
    return finding("info", "memory", where, "%s used; no maxmemory set and no container memory limit readable, so "
                   "there is no limit to judge against (host memory is not one)" % human_bytes(used), details)


def judge_evictions(info: Info, interval: Interval, limit: Limit, where: str) -> Finding:
    evicted, expired = interval.deltas["evicted_keys"], interval.deltas["expired_keys"]
    rate = _per_second(evicted, interval)
    details = {"evicted_keys": evicted, "expired_keys": expired, "evicted_per_second": round(rate, 3),
               "expired_per_second": round(_per_second(expired, interval), 3), "interval_s": round(interval.seconds, 1),
               "since": interval.since, "maxmemory_policy": info.get("maxmemory_policy")}
    text = "%d key(s) evicted (%.2f/s) and %d expired since the %s (%s ago)" % (
        evicted, rate, expired, interval.since, _human(interval.seconds))
    if evicted:
        text += "; policy %s drops keys to stay under maxmemory" % info.get("maxmemory_policy")
    return finding(limit.grade(rate) if evicted else "ok", "evictions", where, text, details)


def judge_fragmentation(info: Info, limit: Limit, where: str) -> Finding:
    used = info_int(info, "used_memory")
    try:
        ratio = float(info.get("mem_fragmentation_ratio", 0))
    except ValueError:
        ratio = 0.0
    details = {"mem_fragmentation_ratio": ratio, "used_memory": used, "used_memory_rss": info_int(info, "used_memory_rss")}
    if used < FRAGMENTATION_MIN_USED:
        return finding("ok", "fragmentation", where, "ratio %.2f not judged below %s used memory (%s used)" % (
            ratio, human_bytes(FRAGMENTATION_MIN_USED), human_bytes(used)), details)
    if 0 < ratio < 1:
        return finding("warning", "fragmentation", where, "ratio %.2f: resident memory is below used memory, part of "
                       "Redis is swapped out" % ratio, details)
    severity = limit.grade(ratio)
    text = "fragmentation ratio %.2f (RSS %s for %s used)" % (ratio, human_bytes(details["used_memory_rss"]), human_bytes(used))
    if severity != "ok":
        text += "; consider activedefrag yes"
    return finding(severity, "fragmentation", where, text, details)


def judge_connections(info: Info, limit: Limit, where: str) -> Finding:
    clients, maxclients = info_int(info, "connected_clients"), info_int(info, "maxclients")
    if maxclients <= 0:
        return finding("info", "connections", where, "%d client(s) connected; maxclients is not reported" % clients,
                       {"connected_clients": clients})
    share = 100.0 * clients / maxclients
    details = {"connected_clients": clients, "maxclients": maxclients, "percent": round(share, 1)}
    return finding(limit.grade(share), "connections", where, "%d of maxclients %d connected (%s)" % (
        clients, maxclients, _pct(share)), details)


def judge_rejected(interval: Interval, limit: Limit, where: str) -> Finding:
    rejected = interval.deltas["rejected_connections"]
    text = "%d connection(s) rejected since the %s (%s ago)" % (rejected, interval.since, _human(interval.seconds))
    if rejected:
        text += ": maxclients was reached and clients got errors"
    return finding(limit.grade(rejected) if rejected else "ok", "rejected_connections", where, text,
                   {"rejected_connections": rejected, "since": interval.since, "interval_s": round(interval.seconds, 1)})


def judge_blocked(info: Info, limit: Limit, where: str) -> Finding:
    blocked = info_int(info, "blocked_clients")
    severity = limit.grade(blocked)
    if severity == "ok" and blocked:
        severity = "info"
    return finding(severity, "blocked_clients", where, "%d client(s) blocked in BLPOP/BRPOP/XREAD/WAIT-style calls"
                   % blocked, {"blocked_clients": blocked})


def judge_rdb(info: Info, save_points: t.Optional[str], now_s: float, limit: Limit, where: str) -> Finding:
    """The last BGSAVE's status, and the age of the last good save while changes wait to be saved."""
    status = info.get("rdb_last_bgsave_status", "ok")
    changes = info_int(info, "rdb_changes_since_last_save")
    last = info_int(info, "rdb_last_save_time")
    age = max(0.0, now_s - last) if last else None
    details = {"rdb_last_bgsave_status": status, "rdb_changes_since_last_save": changes, "rdb_last_save_time": last,
               "last_save_age_s": None if age is None else round(age), "save": save_points,
               "bgsave_in_progress": bool(info_int(info, "rdb_bgsave_in_progress"))}
    since = "" if age is None else " %s ago" % _human(age)
    if status != "ok":
        return finding("critical", "rdb_save", where, "the last BGSAVE failed (rdb_last_bgsave_status %s); the last good "
                       "save was%s and %d change(s) are not on disk; see the Redis log (disk full or the data "
                       "directory not writable?)" % (status, since, changes), details)
    if save_points == "" and not info_int(info, "aof_enabled"):
        return finding("info", "rdb_save", where, "no save points and AOF off: the data lives only in memory "
                       "(%d change(s) since the last save)" % changes, details)
    if not changes or age is None:
        return ok_finding("rdb_save", where, "last save%s, no change since" % since, **details)
    return finding(limit.grade(age), "rdb_save", where, "%d change(s) not saved, last save%s" % (changes, since), details)


def judge_aof(info: Info, where: str) -> Finding:
    details: t.Dict[str, t.Any] = {key: info.get(key, "ok") for key in ("aof_last_write_status", "aof_last_bgrewrite_status")}
    details.update((key, info_int(info, key)) for key in ("aof_enabled", "aof_rewrite_in_progress",
                                                          "aof_rewrites_consecutive_failures"))
    if not info_int(info, "aof_enabled"):
        return ok_finding("aof", where, "AOF is off", **details)
    if info.get("aof_last_write_status", "ok") != "ok":
        return finding("critical", "aof", where, "the last AOF write failed (aof_last_write_status %s): Redis refuses "
                       "writes until it succeeds; see the Redis log (disk full?)" % info.get("aof_last_write_status"), details)
    if info.get("aof_last_bgrewrite_status", "ok") != "ok":
        return finding("warning", "aof", where, "the last AOF rewrite failed (%d consecutive failure(s)); the AOF keeps "
                       "growing" % info_int(info, "aof_rewrites_consecutive_failures"), details)
    return ok_finding("aof", where, "AOF on, last write and rewrite ok", **details)


def judge_fork(info: Info, limit: Limit, where: str) -> Finding:
    usec = info_int(info, "latest_fork_usec")
    seconds = usec / 1e6
    details = {"latest_fork_usec": usec, "total_forks": info_int(info, "total_forks")}
    if not usec:
        return ok_finding("fork_time", where, "no fork since the server started", **details)
    severity = limit.grade(seconds)
    text = "the latest fork blocked the server for %s" % _human(seconds)
    if severity != "ok":
        text += " (every client waits while Redis forks for BGSAVE or an AOF rewrite; transparent huge pages or a large dataset?)"
    return finding(severity, "fork_time", where, text, details)


def _fields(value: t.Any) -> t.Dict[str, str]:
    return dict(item.split("=", 1) for item in str(value).split(",") if "=" in item)


def judge_replication(info: Info, th: t.Mapping[str, Limit], where: str) -> t.List[Finding]:
    """On a replica, its link to the master; on a master, each replica's offset lag in bytes and ack lag."""
    if info.get("role") == "slave":
        master = "%s:%s" % (info.get("master_host"), info.get("master_port"))
        obj = "master/%s" % master
        details: t.Dict[str, t.Any] = {"master": master, "master_link_status": info.get("master_link_status"),
                                       "master_sync_in_progress": info_int(info, "master_sync_in_progress"),
                                       "slave_repl_offset": info_int(info, "slave_repl_offset")}
        if info.get("master_link_status") != "up":
            down = float(info_int(info, "master_link_down_since_seconds", -1))
            details["link_down_s"] = down if down >= 0 else None
            severity = th["link_down"].grade(max(down, 0.0)) if down >= 0 else "critical"
            return [finding("warning" if severity == "ok" else severity, "replication", obj,
                            "the link to master %s is down%s%s" % (
                                master, " for %s" % _human(down) if down >= 0 else "",
                                " (a full sync is in progress)" if details["master_sync_in_progress"] else ""), details)]
        io_age = float(info_int(info, "master_last_io_seconds_ago"))
        details["last_io_s"] = io_age
        return [finding(th["replication_lag"].grade(io_age), "replication", obj, "link to master %s up, last contact %s "
                        "ago" % (master, _human(io_age)), details)]
    offset = info_int(info, "master_repl_offset")
    found = []
    for index in range(info_int(info, "connected_slaves")):
        replica = _fields(info.get("slave%d" % index, ""))
        name = "%s:%s" % (replica.get("ip"), replica.get("port"))
        lag_bytes = max(0, offset - int(replica.get("offset", "0") or 0))
        ack_lag = float(replica.get("lag", "0") or 0)
        grades = (th["replication_lag_bytes"].grade(lag_bytes), th["replication_lag"].grade(ack_lag))
        severity = "critical" if "critical" in grades else "warning" if "warning" in grades else "ok"
        if replica.get("state") != "online":
            severity = "warning" if severity == "ok" else severity
        found.append(finding(severity, "replication", "replica/%s" % name, "replica %s %s, %s behind, last ack %s ago" % (
            name, replica.get("state"), human_bytes(lag_bytes), _human(ack_lag)),
            {"state": replica.get("state"), "lag_bytes": lag_bytes, "ack_lag_s": ack_lag, "master_repl_offset": offset}))
    if not found:
        found.append(ok_finding("replication", where, "a master with no replica connected", master_repl_offset=offset))
    return found


class SlowEntry(t.NamedTuple):
    """One slowlog entry without its arguments (which can hold data)."""

    id: int
    started: int
    duration_us: int
    command: str
    client: str
    client_name: str


def _text(value: t.Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def slow_entry(raw: t.Sequence[t.Any]) -> SlowEntry:
    """A ``SLOWLOG GET`` entry keeping only the command name (and a subcommand keyword)."""
    args = list(raw[3]) if len(raw) > 3 and isinstance(raw[3], list) else []
    name = _text(args[0]).upper() if args else "?"
    if name in _CONTAINER_COMMANDS and len(args) > 1:
        sub = _text(args[1]).upper()
        if sub.replace("-", "").isalpha() and len(sub) <= 20:
            name = "%s %s" % (name, sub)
    return SlowEntry(int(raw[0]), int(raw[1]), int(raw[2]), name, _text(raw[4]) if len(raw) > 4 else "",
                     _text(raw[5]) if len(raw) > 5 else "")


def judge_slowlog(entries: t.Sequence[SlowEntry], after_id: t.Optional[int], limit: Limit, where: str) -> t.List[Finding]:
    """Entries newer than ``after_id`` at or above the warning level, one finding per command name."""
    fresh = [e for e in entries if after_id is None or e.id > after_id]
    by_command: t.Dict[str, t.List[SlowEntry]] = {}
    for entry in fresh:
        if limit.grade(entry.duration_us / 1e6) != "ok":
            by_command.setdefault(entry.command, []).append(entry)
    found = []
    for command, items in sorted(by_command.items()):
        slowest = max(items, key=lambda e: e.duration_us)
        found.append(finding(limit.grade(slowest.duration_us / 1e6), "slowlog", "command/%s" % command,
                             "%s ran %d time(s) slower than the threshold, the slowest %s (client %s)" % (
                                 command, len(items), _human(slowest.duration_us / 1e6), slowest.client or "?"),
                             {"command": command, "count": len(items), "max_duration_us": slowest.duration_us,
                              "last_started": max(e.started for e in items),
                              "clients": sorted({e.client for e in items if e.client})}))
    if not found:
        found.append(ok_finding("slowlog", where, "%d new slowlog entr%s, none over the threshold" % (
            len(fresh), "y" if len(fresh) == 1 else "ies"), new_entries=len(fresh)))
    if after_id is not None and fresh and min(e.id for e in fresh) > after_id + 1:
        found.append(finding("info", "slowlog", where, "%d slowlog entries were dropped since the previous run "
                             "(slowlog-max-len is too small for the interval)" % (min(e.id for e in fresh) - after_id - 1)))
    return found


def judge_hit_ratio(interval: Interval, limit: Limit, where: str) -> Finding:
    hits, misses = interval.deltas["keyspace_hits"], interval.deltas["keyspace_misses"]
    lookups = hits + misses
    details = {"keyspace_hits": hits, "keyspace_misses": misses, "since": interval.since}
    if lookups < MIN_LOOKUPS:
        return finding("info", "hit_ratio", where, "too few key lookups since the %s (%d) to judge the hit ratio" % (
            interval.since, lookups), details)
    ratio = 100.0 * hits / lookups
    severity = limit.grade(ratio)
    return finding("info" if severity == "ok" else severity, "hit_ratio", where, "keyspace hit ratio %s since the %s "
                   "(%d of %d lookups)" % (_pct(ratio), interval.since, hits, lookups), dict(details, percent=round(ratio, 2)))


class AclDenials(t.NamedTuple):
    """ACL denials since the server started (``total``) and the ACL LOG grouped by user and reason."""

    total: int
    by_user: t.Mapping[str, int]


def judge_acl_denials(denials: AclDenials, previous: t.Optional[int], interval: Interval, limit: Limit,
                      where: str) -> Finding:
    new = denials.total - previous if previous is not None and interval.since == "previous run" else denials.total
    new = max(0, new)
    details = {"denials": new, "since": interval.since, "by_user_and_reason": dict(denials.by_user)}
    text = "%d ACL denial(s) since the %s" % (new, interval.since)
    if new and denials.by_user:
        text += " (%s)" % ", ".join("%s: %d" % item for item in sorted(denials.by_user.items()))
    return finding(limit.grade(new) if new else "ok", "acl_denials", where, text, details)


class Exposure(t.NamedTuple):
    """What the risky configuration check reads."""

    bind: str
    protected_mode: str
    default_flags: t.List[str]
    dangerous: t.List[str]
    debug_command: str


def _loopback_only(bind: str) -> bool:
    addresses = [word.lstrip("-") for word in bind.split()]
    if not addresses:
        return False
    for address in addresses:
        if address == "localhost":
            continue
        try:
            if not ipaddress.ip_address(address).is_loopback:
                return False
        except ValueError:
            return False
    return True


def judge_risky_config(exposure: Exposure, where: str) -> t.List[Finding]:
    found = []
    default_on = "on" in exposure.default_flags
    open_default = default_on and "nopass" in exposure.default_flags
    loopback = _loopback_only(exposure.bind)
    details = {"bind": exposure.bind, "protected_mode": exposure.protected_mode, "default_user": exposure.default_flags}
    if open_default and not loopback:
        severity = "critical" if exposure.protected_mode == "no" else "warning"
        found.append(finding(severity, "risky_config", "user/default", "the default user needs no password and Redis "
                             "listens on %s%s" % (exposure.bind, ", protected-mode is off: anyone who reaches it runs any "
                                                  "command" if severity == "critical" else
                                                  " (protected-mode refuses remote clients until it is turned off)"), details))
    if exposure.protected_mode == "no":
        found.append(finding("warning", "risky_config", "config/protected-mode", "protected-mode is off", details))
    allowed = list(exposure.dangerous)
    if exposure.debug_command == "no" and "DEBUG" in allowed:
        allowed.remove("DEBUG")
    if default_on and allowed:
        found.append(finding("warning", "risky_config", "user/default", "the default user may run %s; disable them "
                             "for it (ACL SETUSER default -@dangerous) or rename them" % ", ".join(allowed),
                             dict(details, dangerous_commands=allowed)))
    if not found:
        found.append(ok_finding("risky_config", where, "no password-less default user on a reachable address, "
                                "protected-mode on, no dangerous command open to the default user", **details))
    return found


# --------------------------------------------------------------------------- reading

def container_memory_limit(pid: int, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> t.Optional[int]:
    """The memory limit of the cgroup holding process ``pid`` (v2 ``memory.max`` or v1
    ``memory.limit_in_bytes``); None when there is none or it cannot be read."""
    try:
        with open(os.path.join(proc, str(pid), "cgroup"), "r", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            candidates.append(os.path.join(cgroup_root, parts[2].lstrip("/"), "memory.max"))
        elif "memory" in parts[1].split(","):
            candidates.append(os.path.join(cgroup_root, "memory", parts[2].lstrip("/"), "memory.limit_in_bytes"))
    for path in candidates:
        try:
            with open(path, "r", encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        # "max" (v2) or a page-rounded 2**63 (v1) mean no limit.
        if text.isdigit() and int(text) < 2 ** 60:
            return int(text)
    return None


def _local_redis_pid(connection: RedisConnectionOptions, info: Info, proc: str = "/proc") -> t.Optional[int]:
    """The server's process id when it runs on this host (a loopback ``login_host`` and a ``redis`` process)."""
    host = connection.login_host
    if connection.via:
        return None  # through a tunnel the server runs in a Pod, not here
    try:
        local = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        local = False
    pid = info_int(info, "process_id")
    if not local or pid <= 0:
        return None
    try:
        with open(os.path.join(proc, str(pid), "comm"), "r", encoding="utf-8") as handle:
            return pid if handle.read().startswith("redis") else None
    except OSError:
        return None


class _Scan:
    """Reads the server for the selected checks and collects findings; counts the commands sent."""

    def __init__(self, conn: RedisConnection, opts: RedisHealthOptions) -> None:
        self.conn = conn
        self.opts = opts
        self.th = opts.thresholds
        self.where = "server/%s" % opts.connection.where
        self.findings: t.List[Finding] = []
        self.commands = 0
        self.counters: t.Dict[str, t.Any] = {}

    def wants(self, *checks: str) -> bool:
        return any(check in self.opts.checks for check in checks)

    def add(self, findings: t.Iterable[Finding]) -> None:
        self.findings.extend(item for item in findings if item["check"] in self.opts.checks)

    def call(self, *args: t.Union[str, int]) -> t.Any:
        self.commands += 1
        return self.conn.call(*args)

    def unknown(self, checks: t.Sequence[str], why: str) -> None:
        self.add(unknown_finding(check, self.where, why) for check in checks)

    def run(self) -> t.Optional[Info]:
        try:
            self.call("PING")
        except RedisReplyError as exc:
            if exc.code != "NOPERM":
                self.add([finding("critical", "reachability", self.where, "Redis at %s answers PING with an error: %s"
                                  % (self.conn.where, exc.text))])
                return None
        try:
            text = self.call("INFO")
        except RedisReplyError as exc:
            self.add([ok_finding("reachability", self.where, "accepting connections (INFO not allowed)")])
            self.unknown(INFO_CHECKS + ("acl_denials",), not_allowed(self.conn, exc, INFO_RIGHTS))
            self._slowlog(None)
            self._risky_config()
            return None
        info = parse_info(_text(text))
        self.add([ok_finding("reachability", self.where, "accepting connections: Redis %s (%s, up %s)" % (
            info.get("redis_version"), info.get("redis_mode"), _human(float(info_int(info, "uptime_in_seconds")))),
            version=info.get("redis_version"), uptime_s=info_int(info, "uptime_in_seconds"))])
        self._info_checks(info)
        self._slowlog(info)
        self._acl_denials(info)
        self._risky_config()
        return info

    def _info_checks(self, info: Info) -> None:
        interval = interval_of(info, self.opts.previous)
        self.counters.update(run_id=info.get("run_id"), uptime_s=info_int(info, "uptime_in_seconds"),
                             **{key: info_int(info, key) for key in COUNTERS})
        th, where = self.th, self.where
        limit = None
        if self.wants("memory") and info_int(info, "maxmemory") == 0:
            pid = _local_redis_pid(self.opts.connection, info)
            limit = container_memory_limit(pid) if pid else None
        now_s = info_int(info, "server_time_usec") / 1e6 or time.time()
        self.add([judge_role(info, self.opts.expected_role, where), judge_memory(info, limit, th["memory"], where),
                  judge_evictions(info, interval, th["evictions"], where),
                  judge_fragmentation(info, th["fragmentation"], where), judge_connections(info, th["connections"], where),
                  judge_rejected(interval, th["rejected_connections"], where),
                  judge_blocked(info, th["blocked_clients"], where),
                  judge_rdb(info, self._save_points() if self.wants("rdb_save") else None, now_s, th["rdb_age"], where),
                  judge_aof(info, where), judge_fork(info, th["fork_time"], where),
                  judge_hit_ratio(interval, th["hit_ratio"], where)])
        self.add(judge_replication(info, th, where))

    def _save_points(self) -> t.Optional[str]:
        """``CONFIG GET save``; None when it may not be read (the age of the last save is judged anyway)."""
        try:
            reply = self.call("CONFIG", "GET", "save")
        except RedisReplyError:
            return None
        return _text(reply[1]) if isinstance(reply, list) and len(reply) >= 2 else None

    def _slowlog(self, info: t.Optional[Info]) -> None:
        if not self.wants("slowlog"):
            return
        try:
            raw = self.call("SLOWLOG", "GET", SLOWLOG_ENTRIES)
        except RedisReplyError as exc:
            self.unknown(("slowlog",), not_allowed(self.conn, exc, SLOWLOG_RIGHTS))
            return
        entries = [slow_entry(item) for item in raw or []]
        previous = self.opts.previous
        same_run = previous is not None and info is not None and previous.run_id == info.get("run_id")
        after = previous.slowlog_last_id if same_run and previous is not None else None
        self.counters["slowlog_last_id"] = max([e.id for e in entries] + [after if after is not None else -1])
        self.add(judge_slowlog(entries, after, self.th["slow_command"], self.where))

    def _acl_denials(self, info: Info) -> None:
        if not self.wants("acl_denials"):
            return
        by_user: t.Dict[str, int] = {}
        log_total = 0
        try:
            log = self.call("ACL", "LOG", ACL_LOG_ENTRIES)
        except RedisReplyError as exc:
            log = None
            if not any(field in info for field in _ACL_DENIAL_FIELDS):
                self.unknown(("acl_denials",), not_allowed(self.conn, exc, ACL_LOG_RIGHTS))
                return
        for entry in log or []:
            fields = dict(zip((_text(k) for k in entry[::2]), entry[1::2]))
            key = "%s/%s" % (_text(fields.get("username", "?")), _text(fields.get("reason", "?")))
            count = int(fields.get("count", 1))
            by_user[key] = by_user.get(key, 0) + count
            log_total += count
        # Redis 7.2 counts every denial in INFO; before it, the ACL LOG (its last entries) is all there is.
        total = sum(info_int(info, f) for f in _ACL_DENIAL_FIELDS) if _ACL_DENIAL_FIELDS[0] in info else log_total
        self.counters["acl_denials"] = total
        previous = self.opts.previous.acl_denials if self.opts.previous is not None else None
        self.add([judge_acl_denials(AclDenials(total, by_user), previous, interval_of(info, self.opts.previous),
                                    self.th["acl_denials"], self.where)])

    def _risky_config(self) -> None:
        if not self.wants("risky_config"):
            return
        try:
            replies = [self.call("CONFIG", "GET", name) for name in ("bind", "protected-mode", "enable-debug-command")]
            config = {_text(r[0]): _text(r[1]) for r in replies if isinstance(r, list) and len(r) >= 2}
            user = self.call("ACL", "GETUSER", "default")
            flags = [_text(f) for f in dict(zip((_text(k) for k in user[::2]), user[1::2])).get("flags", [])]
            dangerous = []
            for command in DANGEROUS_COMMANDS:
                self.commands += 1
                reply = self.conn.pipeline([("ACL", "DRYRUN", "default") + command])[0]
                if isinstance(reply, RedisReplyError) and reply.code == "NOPERM":
                    raise reply
                # OK, or a text saying why the user may not run it (an error when the command does not exist).
                if reply == "OK":
                    dangerous.append(command[0])
        except RedisReplyError as exc:
            self.unknown(("risky_config",), not_allowed(self.conn, exc, RISKY_CONFIG_RIGHTS))
            return
        self.add(judge_risky_config(Exposure(config.get("bind", ""), config.get("protected-mode", ""), flags, dangerous,
                                             config.get("enable-debug-command", "no")), self.where))


def run_redis_health(task: Task[RedisHealthOptions]) -> Result:
    """Everything ``redis_health`` returns; fails, keeping it all, when ``fail_on`` is reached."""
    opts = task.options
    where = "server/%s" % opts.connection.where
    scan: t.Optional[_Scan] = None
    info: t.Optional[Info] = None
    try:
        opts = task.options = dataclasses.replace(opts, connection=reach(task, opts.connection))
        scan = _Scan(task.adopt(opts.connection.connect()), opts)
    except RunbookError as exc:
        findings = [finding("critical", "reachability", where, exc.msg)]
    else:
        info = scan.run()
        findings = scan.findings
    commands = scan.commands if scan is not None else 0
    server = None if info is None else {
        "version": info.get("redis_version"), "mode": info.get("redis_mode"),
        "role": "replica" if info.get("role") == "slave" else info.get("role"), "run_id": info.get("run_id"),
        "uptime_s": info_int(info, "uptime_in_seconds"), "used_memory": info_int(info, "used_memory"),
        "maxmemory": info_int(info, "maxmemory"), "maxmemory_policy": info.get("maxmemory_policy")}
    return judged("Redis health on %s" % opts.connection.where, findings, opts.fail_on, "%d commands" % commands,
                  server=server, checks_run=sorted({f["check"] for f in findings}, key=CHECKS.index),
                  counters=scan.counters if scan is not None else {}, commands=commands)
