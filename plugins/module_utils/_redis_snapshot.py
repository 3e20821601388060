# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``redis_snapshot`` task: its options (:class:`RedisSnapshotOptions`) and the backup and verify
flows; restores are in ``_redis_restore``.

- Backup: the RDB by the replication protocol (``_redis_replication``) or by a BGSAVE that is really
  done (not in progress, last status ok, save counter advanced; LASTSAVE's one-second resolution is
  never relied on), streamed through the repository, with the header and end checked on the way.
- Verify: ``checksum`` (stored bytes against the manifest), ``rdb`` (header, end opcode, CRC64 and
  ``redis-check-rdb``, see ``_rdb``) or ``load`` (a throwaway server loads it, see ``_redis_server``).
- Guarded flush (``state=flushed``): refuse on protected keys, then a backup and its verification,
  then ``FLUSHDB``/``FLUSHALL`` (the protected-key check and the command are in ``_redis_flush``).
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import (
    UNENCRYPTED_WARNING, BackupJobOptions, backup_job_argspec, backup_result, fresh_backup, prune_after_success,
    throughput_mib_s, verified_entry)
from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Stopwatch, Task, options_from
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    backup_id as backup_id_name, check_params, local_path, no_control, optional, path_segment, shown)
from ansible_collections.runbook.ops.plugins.module_utils._rdb import (
    KIND, OBJECT_NAME, InspectingReader, RDBInspector, Readable, StoredSnapshot, check_rdb_stream, databases_needed,
    recorded_keys)
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    Info, RedisConnection, RedisConnectionOptions, RedisReplyError, UnknownCommand, info_int, keys_per_db, keyspace_differences,
    permission_error, reach, redis_connection_argspec, server_facts)
from ansible_collections.runbook.ops.plugins.module_utils._redis_files import LocalError
from ansible_collections.runbook.ops.plugins.module_utils._redis_flush import (
    FLUSH_RIGHTS, MAX_DB, FlushPlan, ProtectedKeys, describe_protected, protected_keys, protected_pattern, run_flush)
from ansible_collections.runbook.ops.plugins.module_utils._redis_replication import REPLICATION_RIGHTS, ReplicationSource
from ansible_collections.runbook.ops.plugins.module_utils._redis_restore import restore
from ansible_collections.runbook.ops.plugins.module_utils._redis_server import ThrowawayRedis
from ansible_collections.runbook.ops.plugins.module_utils._repository import BackupWriter, Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import NullSink, decode_stream, load_identities

BACKUP_METHODS = ("replication", "bgsave")
RESTORE_METHODS = ("keys", "file")
# The default method depends on the state, which an argument spec cannot express.
DEFAULT_METHODS = {"backup": "replication", "restore": "keys", "verify": "", "flushed": "replication"}
BGSAVE_RIGHTS = "+info +bgsave +config|get"
MAX_WAIT_TIMEOUT = 30 * 86400
# Where the runbooks keep sessions and rate limits (express-session, Flask-Session, Rack::Attack, ...).
DEFAULT_PROTECTED_PATTERNS = ["session:*", "sess:*", "ratelimit:*", "rate_limit:*", "rl:*"]


# --------------------------------------------------------------------------- options

def redis_snapshot_argspec() -> t.Dict[str, t.Any]:
    """Every option of the module: connection, backup job (repository, encryption, retention) and its own."""
    spec = backup_job_argspec()
    spec.update(redis_connection_argspec())
    spec.update(
        state=dict(type="str", choices=["backup", "restore", "verify", "flushed"], default="backup"),
        method=dict(type="str", choices=list(BACKUP_METHODS + RESTORE_METHODS)),
        level=dict(type="str", choices=["checksum", "rdb", "load"], default="rdb"),
        backup_id=dict(type="str"),
        flush=dict(type="bool", default=False),
        service_name=dict(type="str"),
        stop_command=dict(type="list", elements="str"),
        start_command=dict(type="list", elements="str"),
        spool_dir=dict(type="path"),
        wait_timeout=dict(type="int", default=3600),
        db=dict(type="int"),
        flush_all=dict(type="bool"),
        protected_patterns=dict(type="list", elements="str", default=list(DEFAULT_PROTECTED_PATTERNS)),
        force=dict(type="bool", default=False),
    )
    return spec


def _unit_name(what: str, value: t.Any) -> str:
    text = no_control(what, value)
    if not text or text.startswith("-") or any(char.isspace() for char in text) or "/" in text:
        raise RunbookError("%s %s is not a systemd unit name (no leading '-', whitespace or '/')" % (what, shown(text)))
    return text


def _argv_item(what: str, value: t.Any) -> str:
    if not isinstance(value, str):
        raise RunbookError("%s %s is not a string" % (what, shown(value)))
    if "\x00" in value:
        raise RunbookError("%s %s holds a NUL byte, which no program argument can hold" % (what, shown(value)))
    return value


_SNAPSHOT_RULES = {
    "spool_dir": optional(local_path),
    "set": optional(path_segment),
    "backup_id": optional(lambda what, value: backup_id_name(value, what)),
    "service_name": optional(_unit_name),
    "stop_command": _argv_item,
    "start_command": _argv_item,
    "protected_patterns": protected_pattern,
}


def _method(state: str, method: t.Optional[str]) -> str:
    if method is None:
        return DEFAULT_METHODS[state]
    if state in ("backup", "flushed") and method not in BACKUP_METHODS:
        raise RunbookError("method=%s is a restore method; state=%s takes replication or bgsave" % (method, state))
    if state == "restore" and method not in RESTORE_METHODS:
        raise RunbookError("method=%s is a backup method; state=restore takes keys or file" % method)
    return method


@dataclasses.dataclass(frozen=True)
class RedisSnapshotOptions:
    """Everything a ``redis_snapshot`` task reads, checked before anything is connected to, read or written.

    ``method`` is the one the task uses (the state's default when the option is empty); ``set_name``
    the backup set (``<login_host>-<login_port>`` when ``set`` is empty)."""

    state: str
    method: str
    level: str
    backup_id: t.Optional[str]
    flush: bool
    service_name: t.Optional[str]
    stop_command: t.Optional[t.List[str]]
    start_command: t.Optional[t.List[str]]
    spool_dir: t.Optional[str]
    wait_timeout: int
    db: t.Optional[int]
    flush_all: t.Optional[bool]
    protected_patterns: t.List[str]
    force: bool
    encryption_identity: t.Optional[str] = dataclasses.field(repr=False)
    set_name: str
    connection: RedisConnectionOptions
    job: BackupJobOptions

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RedisSnapshotOptions":
        connection = RedisConnectionOptions.from_params(params)
        check_params(params, _SNAPSHOT_RULES)
        for option in ("stop_command", "start_command"):
            if params[option] is not None and not params[option]:
                raise RunbookError("%s is an empty list; give the program and its arguments" % option)
        wait = params["wait_timeout"]
        if not 1 <= wait <= MAX_WAIT_TIMEOUT:
            raise RunbookError("wait_timeout must be between 1 and %d seconds (30 days), not %s"
                               % (MAX_WAIT_TIMEOUT, shown(wait)))
        job = BackupJobOptions.from_params(params)
        if params["state"] == "flushed":
            _check_flush(params)
        set_name = job.set
        if not set_name:
            set_name = path_segment("the default set (login_host-login_port, since set is empty)",
                                    "%s-%s" % (connection.login_host, connection.login_port))
        return options_from(cls, params, method=_method(params["state"], params["method"]), set_name=set_name,
                            connection=connection, job=job)


def _check_flush(params: t.Mapping[str, t.Any]) -> None:
    """What the argument spec cannot say about ``state=flushed``: a named target, and a snapshot it can verify."""
    if params["db"] is None and not params["flush_all"]:
        raise RunbookError("state=flushed needs its target named: db (FLUSHDB of that database) or flush_all: true "
                           "(FLUSHALL); flush_all: false names none")
    if params["db"] is not None and not 0 <= params["db"] < MAX_DB:
        raise RunbookError("db=%s is not a database number (0, 1, ...)" % params["db"])
    if params["encryption_recipients"] and params["level"] != "checksum" and not params["encryption_identity"]:
        raise RunbookError("state=flushed verifies the encrypted snapshot at level=%s before flushing, which needs "
                           "encryption_identity (or level: checksum)" % params["level"])


def run_redis_snapshot(task: Task[RedisSnapshotOptions]) -> Result:
    if task.options.state != "verify":  # verify reads the repository only: no server, no tunnel
        task.options = dataclasses.replace(task.options, connection=reach(task, task.options.connection))
    if task.options.state == "backup":
        return backup(task)
    if task.options.state == "verify":
        return verify(task)
    if task.options.state == "flushed":
        return flushed(task)
    return restore(task)


# --------------------------------------------------------------------------- backup

def backup(task: Task[RedisSnapshotOptions]) -> Result:
    opts = task.options
    watch = Stopwatch()
    repo = task.client(Repository.from_options)
    fresh = fresh_backup(repo, KIND, opts.set_name, opts.job.max_age)
    if fresh is not None:
        result = backup_result(fresh, watch.elapsed, skipped=True)
        result["msg"] = "backup %s of set %r is younger than max_age (%gs): nothing to do" % (
            fresh["id"], opts.set_name, t.cast(float, opts.job.max_age))
        return result
    if not opts.job.encryption_recipients:
        task.warn(UNENCRYPTED_WARNING)
    conn = task.adopt(opts.connection.connect())
    facts = server_facts(conn, _snapshot_rights(opts.method))
    if task.check_mode:
        result = backup_result(None, watch.elapsed)
        result.update(changed=True, msg="would snapshot Redis %s at %s by %s into %s, set %r (%d keys, %d bytes used "
                      "memory)" % (facts["version"], conn.where, opts.method, repo.url, opts.set_name,
                                   sum(facts["keys"].values()), facts["used_memory"]))
        return result
    manifest = _store_snapshot(task, repo.new_backup(KIND, opts.set_name, opts.job.labels), conn, facts)
    pruned = prune_after_success(repo, KIND, opts.set_name, opts.job.retention)
    result = backup_result(manifest, watch.elapsed, pruned=pruned)
    result["msg"] = "snapshot %s of Redis at %s stored in %s (%d bytes RDB, %d stored)" % (
        manifest["id"], opts.connection.where, repo.url, manifest["raw_size"], manifest["size"])
    return result


def _snapshot_rights(method: str) -> str:
    return REPLICATION_RIGHTS if method == "replication" else BGSAVE_RIGHTS


def _store_snapshot(task: Task[RedisSnapshotOptions], writer: BackupWriter, conn: RedisConnection,
                    facts: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """Stream the RDB into ``writer`` (a new backup) and commit it with the server's facts; returns the manifest."""
    opts = task.options
    inspector = RDBInspector("the RDB from %s" % conn.where)
    extra: t.Dict[str, t.Any] = {}
    with writer:
        if opts.method == "replication":
            source = ReplicationSource(conn)
            extra["transfer"] = "diskless" if source.diskless else "disk"
            entry = _add_rdb(writer, opts.job, InspectingReader(source, inspector), source.length or facts["used_memory"])
        else:
            extra.update(bgsave_and_wait(conn, float(opts.wait_timeout)))
            path = rdb_path(conn)
            try:
                handle = open(path, "rb")  # pylint: disable=consider-using-with
            except OSError as exc:
                raise RunbookError("cannot read the RDB file %s on the managed host: %s (method=bgsave needs the "
                                   "Redis data directory on the managed host; use method=replication for a "
                                   "remote server)" % (path, exc.strerror or exc))
            with handle:
                entry = _add_rdb(writer, opts.job, InspectingReader(handle, inspector), os.fstat(handle.fileno()).st_size)
            extra["rdb_path"] = path
        inspector.check_end()
        redis_facts = {
            "version": facts["version"], "rdb_version": inspector.version, "method": opts.method,
            "keys": facts["keys"], "expires": facts["expires"], "used_memory": facts["used_memory"],
            "role": facts["role"], "rdb_size": entry["raw_size"], "rdb_checksum": "%016x" % inspector.stored_crc,
        }
        redis_facts.update(extra)
        source_facts = {"host": opts.connection.login_host, "port": opts.connection.login_port,
                        "server_version": facts["version"], "user": opts.connection.acl_user,
                        "kubernetes_tunnel": opts.connection.tunnel or None}
        task.verify_clients()  # a tunnel that broke mid-transfer fails the backup here
        return writer.commit(source=source_facts, fmt="rdb", compression=opts.job.compression_settings,
                             extra={"redis": redis_facts})


def _add_rdb(writer: BackupWriter, job: BackupJobOptions, source: Readable, size_hint: int) -> t.Dict[str, t.Any]:
    return writer.add_object(OBJECT_NAME, source, compression=job.compression, level=job.compression_level,
                             threads=job.compression_threads, recipients=job.encryption_recipients,
                             size_hint=size_hint)


def rdb_path(conn: RedisConnection) -> str:
    """The server's RDB file, from ``CONFIG GET dir`` and ``dbfilename``."""
    try:
        directory = conn.config_get("dir")
        name = conn.config_get("dbfilename")
    except RedisReplyError as exc:
        if exc.code == "NOPERM":
            raise permission_error(conn, exc, "CONFIG GET", "+config|get")
        raise RunbookError("CONFIG GET on Redis at %s failed: %s" % (conn.where, exc.text))
    if not directory or not name:
        raise RunbookError("Redis at %s did not report its dir/dbfilename" % conn.where)
    return os.path.join(directory, name)


# --------------------------------------------------------------------------- BGSAVE

def _persistence(conn: RedisConnection) -> Info:
    try:
        return conn.info("persistence")
    except RedisReplyError as exc:
        if exc.code == "NOPERM":
            raise permission_error(conn, exc, "INFO", "+info")
        raise


def _wait_for(conn: RedisConnection, done: t.Callable[[Info], bool], deadline: float, what: str,
              poll: float = 0.1) -> Info:
    """Poll ``INFO persistence`` until ``done(info)``; past ``deadline``, fail saying ``what`` did not finish."""
    while True:
        info = _persistence(conn)
        if done(info):
            return info
        if time.monotonic() > deadline:
            raise RunbookError(what)
        time.sleep(poll)


def _idle(info: Info) -> bool:
    return info_int(info, "rdb_bgsave_in_progress") == 0


def bgsave_and_wait(conn: RedisConnection, timeout: float) -> t.Dict[str, t.Any]:
    """Run a BGSAVE of our own and wait until it really finished. Returns facts about the wait."""
    deadline = time.monotonic() + timeout
    facts: t.Dict[str, t.Any] = {"waited_for_running_bgsave": False}
    info = _persistence(conn)
    if not _idle(info):
        facts["waited_for_running_bgsave"] = True
        info = _wait_for(conn, _idle, deadline, "BGSAVE on Redis at %s: a BGSAVE that was already running did not "
                         "finish within %ss" % (conn.where, timeout))
    while True:
        before = info_int(info, "rdb_saves", -1)
        try:
            reply = conn.call("BGSAVE")
        except RedisReplyError as exc:
            if exc.code == "NOPERM":
                raise permission_error(conn, exc, "BGSAVE", BGSAVE_RIGHTS)
            if isinstance(exc, UnknownCommand):
                raise RunbookError(exc.text)
            if "already in progress" not in exc.text:
                raise RunbookError("BGSAVE refused by Redis at %s: %s" % (conn.where, exc.text))
            facts["waited_for_running_bgsave"] = True
            info = _wait_for(conn, _idle, deadline, "BGSAVE on Redis at %s: a BGSAVE started by someone else did "
                             "not finish within %ss" % (conn.where, timeout))
            continue
        break
    if "rdb_saves" not in info:
        raise RunbookError("Redis at %s does not report rdb_saves in INFO persistence (Redis 7.0 or later is "
                           "needed for method=bgsave; use method=replication)" % conn.where)
    info = _wait_for(conn, lambda now: _idle(now) and info_int(now, "rdb_saves", -1) > before, deadline,
                     "BGSAVE on Redis at %s did not finish within %ss (%s)" % (conn.where, timeout, reply))
    if info.get("rdb_last_bgsave_status") != "ok":
        raise RunbookError("BGSAVE on Redis at %s failed: rdb_last_bgsave_status is %r (see the Redis log: "
                           "disk full or the data directory not writable?)"
                           % (conn.where, info.get("rdb_last_bgsave_status")))
    facts["rdb_saves"] = info_int(info, "rdb_saves")
    return facts


# --------------------------------------------------------------------------- verify

def verify(task: Task[RedisSnapshotOptions]) -> Result:
    opts = task.options
    watch = Stopwatch()
    snapshot = StoredSnapshot.find(task.client(Repository.from_options), opts.set_name, opts.backup_id,
                                   load_identities(opts.encryption_identity))
    verified = verify_snapshot(opts, snapshot)
    result: Result = {"changed": False, "backup_id": snapshot.id, "manifest": snapshot.manifest, "verified": [verified],
                      "pruned": [], "duration_s": watch.elapsed,
                      "throughput_mib_s": throughput_mib_s(snapshot.rdb_size, watch.elapsed)}
    if not verified["ok"]:
        raise RunbookError("backup %s failed verification at level %s: %s"
                           % (snapshot.id, opts.level, "; ".join(verified["problems"])), **result)
    result["msg"] = "backup %s verified at level %s" % (snapshot.id, opts.level)
    return result


def verify_snapshot(opts: RedisSnapshotOptions, snapshot: StoredSnapshot) -> t.Dict[str, t.Any]:
    """One ``verified`` entry at ``opts.level``. A problem of the managed host (a full spool) is a
    :class:`LocalError` that fails the task without judging the backup."""
    problems: t.List[str] = []
    details: t.Dict[str, t.Any] = {}
    try:
        if opts.level == "checksum":
            _check_stored_bytes(snapshot)
        elif opts.level == "rdb":
            _require_identity(snapshot, "level=rdb")
            details.update(check_rdb_stream(snapshot))
        else:
            _require_identity(snapshot, "level=load")
            details["keys"] = _load_keys(opts, snapshot)
            problems += keyspace_differences(recorded_keys(snapshot.manifest), details["keys"], "the loaded RDB")
    except LocalError as exc:
        # Not a verdict on the backup: the check itself could not be done here.
        raise LocalError("verify level=%s of backup %s could not be done on the managed host, the backup was not "
                         "judged: %s" % (opts.level, snapshot.id, exc.msg), backup_id=snapshot.id)
    except RunbookError as exc:
        problems.append(exc.msg)
    return verified_entry(snapshot.manifest, opts.level, problems, **details)


def _require_identity(snapshot: StoredSnapshot, what: str) -> None:
    if snapshot.encrypted and not snapshot.identities:
        raise RunbookError("%s needs encryption_identity: backup %s is encrypted" % (what, snapshot.id))


def _check_stored_bytes(snapshot: StoredSnapshot) -> None:
    """The stored bytes against the manifest's size and sha256, without decrypting them."""
    repo, entry = snapshot.repository, snapshot.entry
    reader = repo.backend.open_reader(repo.object_key(snapshot.manifest, entry["name"]))
    try:
        decode_stream(reader, NullSink(), "none", expected_sha256=entry.get("sha256"),
                      expected_size=entry.get("size"), object_name=entry["name"])
    finally:
        reader.close()


def _load_keys(opts: RedisSnapshotOptions, snapshot: StoredSnapshot) -> t.Dict[str, int]:
    """Keys per database of the snapshot as a throwaway server loads it."""
    with ThrowawayRedis(opts.spool_dir, databases_needed(snapshot.manifest), opts.wait_timeout) as local:
        local.spool_rdb(snapshot)
        with local.start() as conn:
            return keys_per_db(conn.info("keyspace"))


# --------------------------------------------------------------------------- guarded flush

def flushed(task: Task[RedisSnapshotOptions]) -> Result:
    """Refuse on protected keys (before anything is written), snapshot and verify, check again, then flush.

    Keys written between the snapshot and the flush are not in the snapshot: the check that runs again
    just before the flush catches protected ones, not others."""
    opts = task.options
    watch = Stopwatch()
    repo = task.client(Repository.from_options)
    target = None if opts.flush_all else opts.db
    rights = "%s %s" % (_snapshot_rights(opts.method), FLUSH_RIGHTS["FLUSHALL" if target is None else "FLUSHDB"])
    with opts.connection.connect() as conn:
        facts = server_facts(conn, rights)
        plan = FlushPlan.of(facts["keys"], target)
        found = _guard(task, conn, plan, "nothing was snapshotted or flushed", warn=task.check_mode)
    result = backup_result(None, watch.elapsed)
    result.update(changed=False, verified=[], flushed=plan.result(found, done=False))
    keys = sum(plan.keys_before.values())
    if not keys:
        result["msg"] = "%s of Redis at %s holds no keys: nothing to snapshot or flush" % (plan.what, opts.connection.where)
        return result
    if not opts.job.encryption_recipients:
        task.warn(UNENCRYPTED_WARNING)
    if task.check_mode:
        result.update(changed=True, msg="would snapshot Redis at %s by %s into %s, set %r, verify it at level %s, then "
                      "flush %s (%d keys)" % (opts.connection.where, opts.method, repo.url, opts.set_name, opts.level,
                                              plan.what, keys))
        return result
    manifest = _store_snapshot(task, repo.new_backup(KIND, opts.set_name, opts.job.labels),
                               task.adopt(opts.connection.connect()), facts)
    result.update(backup_result(manifest, watch.elapsed), changed=True)
    snapshot = StoredSnapshot.find(repo, opts.set_name, manifest["id"], load_identities(opts.encryption_identity))
    entry = verify_snapshot(opts, snapshot)
    result["verified"] = [entry]
    if not entry["ok"]:
        raise RunbookError("snapshot %s failed verification at level %s, nothing was flushed: %s"
                           % (manifest["id"], opts.level, "; ".join(entry["problems"])), **result)
    try:
        # The flush may take long on a big database: its replies get wait_timeout, not connect_timeout.
        with opts.connection.connect(timeout=float(opts.wait_timeout)) as conn:
            plan = FlushPlan.of(server_facts(conn)["keys"], target)
            found = _guard(task, conn, plan, "snapshot %s is kept, nothing was flushed" % manifest["id"], result=result)
            run_flush(conn, plan)
    except RunbookError as exc:
        if "flushed" in exc.details:  # refused by the guard, with the result so far
            raise
        raise RunbookError("%s (snapshot %s is kept; %s was not flushed)" % (exc.msg, manifest["id"], plan.what),
                           **result)
    result["flushed"] = plan.result(found, done=True)
    result["pruned"] = prune_after_success(repo, KIND, opts.set_name, opts.job.retention)
    result["duration_s"] = round(watch.elapsed, 3)
    result["msg"] = "snapshot %s of Redis at %s stored and verified at level %s, then %s emptied (%d keys)" % (
        manifest["id"], opts.connection.where, opts.level, plan.what, sum(plan.keys_before.values()))
    return result


def _guard(task: Task[RedisSnapshotOptions], conn: RedisConnection, plan: FlushPlan, outcome: str,
           result: t.Optional[Result] = None, warn: bool = True) -> ProtectedKeys:
    """The protected keys ``plan`` would flush; refused when there are any and ``force`` is off
    (``outcome`` says what that leaves behind, ``result`` is the partial result so far)."""
    opts = task.options
    found = protected_keys(conn, plan, opts.protected_patterns)
    if not found:
        return found
    if not opts.force:
        details: Result = dict(result) if result else backup_result(None, 0.0)
        details.setdefault("verified", [])
        details.update(changed=bool(result), flushed=plan.result(found, done=False))
        raise RunbookError("refusing to flush %s of Redis at %s: it holds keys matching protected_patterns (%s); %s. "
                           "Set force: true to flush them anyway"
                           % (plan.what, conn.where, describe_protected(found), outcome), **details)
    if warn:
        task.warn("force: true flushes protected keys of Redis at %s (%s)" % (conn.where, describe_protected(found)))
    return found
