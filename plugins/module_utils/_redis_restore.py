# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restores of a Redis snapshot.

- ``method=keys``: a throwaway local server loads the RDB (its key counts are proven first), then every
  key is copied to the target with ``DUMP``/``RESTORE REPLACE``, TTLs kept, pipelined; works on remote
  targets.
- ``method=file``: the RDB becomes the data file of a Redis on the managed host. It is staged and
  proven next to its final place before the server is stopped; with ``appendonly yes`` the AOF is moved
  aside, Redis starts with the AOF off and is switched back on so that the rewrite persists the restored
  data. Anything failing before the start puts the former files back.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import throughput_mib_s, verified_entry
from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Stopwatch, Task
from ansible_collections.runbook.ops.plugins.module_utils._rdb import (
    PYTHON_CRC_LIMIT, RDBInspector, StoredSnapshot, Tee, databases_needed, recorded_keys)
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    RedisConnection, RedisConnectionOptions, RedisReplyError, db_number, info_int, keys_per_db, keyspace_differences,
    permission_error, server_facts)
from ansible_collections.runbook.ops.plugins.module_utils._redis_files import (
    LocalError, LocalFile, read_into_file, unlink_quietly)
from ansible_collections.runbook.ops.plugins.module_utils._redis_server import ThrowawayRedis
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities

if t.TYPE_CHECKING:
    # Only for annotations: _redis_snapshot imports this module to dispatch state=restore.
    from ansible_collections.runbook.ops.plugins.module_utils._redis_snapshot import RedisSnapshotOptions


def restore(task: Task[RedisSnapshotOptions]) -> Result:
    opts = task.options
    watch = Stopwatch()
    snapshot = StoredSnapshot.find(task.client(Repository.from_options), opts.set_name, opts.backup_id,
                                   load_identities(opts.encryption_identity))
    manifest = snapshot.manifest
    if snapshot.encrypted and not snapshot.identities:
        raise RunbookError("backup %s is encrypted: encryption_identity is required to restore it" % snapshot.id)
    expected = recorded_keys(manifest)
    with opts.connection.connect() as conn:
        before = server_facts(conn)
    result: Result = {"changed": True, "backup_id": manifest["id"], "manifest": manifest,
                      "pruned": [], "keys_restored": {}, "verified": [], "throughput_mib_s": 0.0}
    if task.diff:
        result["diff"] = {"before": {"keys": before["keys"]}, "after": {"keys": _expected_after(
            before["keys"], expected, opts.method == "file" or opts.flush)}}
    if task.check_mode:
        result["msg"] = "would restore backup %s (%s keys) into Redis at %s by %s%s" % (
            manifest["id"], sum(expected.values()), opts.connection.where, opts.method,
            " after emptying it" if opts.method == "keys" and opts.flush else "")
        result["duration_s"] = watch.elapsed
        return result
    context = {"backup_id": manifest["id"], "manifest": manifest, "pruned": []}
    try:
        if opts.method == "keys":
            result.update(restore_keys(opts, snapshot))
        else:
            result.update(restore_file(opts, snapshot, before))
    except RunbookError as exc:
        # The failing step's partial result (what was restored) stays; the backup it came from is added.
        for key, value in context.items():
            exc.details.setdefault(key, value)
        raise
    result["duration_s"] = watch.elapsed
    result["throughput_mib_s"] = throughput_mib_s(snapshot.rdb_size, watch.elapsed)
    return result


def _expected_after(before: t.Dict[str, int], expected: t.Dict[str, int], replace_all: bool) -> t.Dict[str, str]:
    after = {}
    for db in sorted(set(before) | set(expected), key=db_number):
        if replace_all:
            after[db] = str(expected.get(db, 0))
        else:
            after[db] = "%s restored over %s existing" % (expected.get(db, 0), before.get(db, 0))
    return after


# --------------------------------------------------------------------------- method=keys

def restore_keys(opts: RedisSnapshotOptions, snapshot: StoredSnapshot) -> Result:
    """Load the RDB into a local throwaway server, prove the key counts, then copy every key."""
    manifest = snapshot.manifest
    with ThrowawayRedis(opts.spool_dir, databases_needed(manifest), opts.wait_timeout) as local:
        try:
            local.spool_rdb(snapshot)
        except LocalError as exc:
            raise LocalError("restore of backup %s into Redis at %s stopped before the target was touched: %s"
                             % (manifest["id"], opts.connection.where, exc.msg), backup_id=manifest["id"])
        with local.start() as source:
            loaded = keys_per_db(source.info("keyspace"))
            problems = keyspace_differences(recorded_keys(manifest), loaded, "the loaded RDB")
            if problems:
                raise RunbookError("backup %s does not load as recorded, the target was not touched: %s"
                                   % (manifest["id"], "; ".join(problems)))
            with opts.connection.connect() as target:
                if opts.flush:
                    _flushall(target)
                databases = [db_number(db) for db in loaded]
                copied = migrate_keys(source, opts.connection, databases) if _can_migrate(opts.connection) else None
                if copied is None:
                    copied = copy_keys(source, target, databases)
    return {"keys_restored": copied, "verified": [verified_entry(manifest, "load", keys=loaded)],
            "msg": "restored %d keys of backup %s into Redis at %s" % (
                sum(copied.values()), manifest["id"], opts.connection.where)}


def _flushall(target: RedisConnection) -> None:
    try:
        target.call("FLUSHALL")
    except RedisReplyError as exc:
        if exc.code == "NOPERM":
            raise permission_error(target, exc, "FLUSHALL", "+flushall")
        raise RunbookError("FLUSHALL on Redis at %s failed: %s" % (target.where, exc.text))


# MIGRATE batches: keys per command, and how long the throwaway server waits for the target (ms).
MIGRATE_BATCH = 1000
MIGRATE_TIMEOUT_MS = 60000


def _can_migrate(target: RedisConnectionOptions) -> bool:
    """The throwaway server can hand the keys to the target itself (server to server, no parsing
    here) only over plain TCP, with the target's RESTORE under its own name."""
    return not target.tls and "RESTORE" not in target.command_names


def migrate_keys(source: RedisConnection, target: RedisConnectionOptions,
                 databases: t.Sequence[int]) -> t.Optional[t.Dict[str, int]]:
    """``MIGRATE ... COPY REPLACE KEYS`` from the throwaway server to the target, batch by batch; it
    keeps TTLs and moves values without decoding them. None when the target refuses the first batch
    (ACL, network path): the caller then copies every key itself; nothing is lost either way, as
    COPY leaves the source whole and REPLACE makes a second copy idempotent."""
    host, port = target.address()
    auth: t.List[t.Union[str, bytes]] = []
    if target.login_password:
        auth = ["AUTH2", target.acl_user, target.login_password] if target.login_user else ["AUTH", target.login_password]
    copied: t.Dict[str, int] = {}
    first = True
    for db in databases:
        source.call("SELECT", db)
        count, cursor = 0, b"0"
        while True:
            cursor, keys = source.call("SCAN", cursor, "COUNT", MIGRATE_BATCH)
            if keys:
                try:
                    source.call("MIGRATE", host, port, "", db, MIGRATE_TIMEOUT_MS, "COPY", "REPLACE", *auth, "KEYS", *keys)
                except RedisReplyError as exc:
                    if first:
                        return None
                    raise RunbookError("MIGRATE of %d keys into db %d of Redis at %s failed: %s"
                                       % (len(keys), db, target.where, exc.text))
                first = False
                count += len(keys)
            if cursor in (b"0", 0, "0"):
                break
        copied["db%d" % db] = count
    return copied


def copy_keys(source: RedisConnection, target: RedisConnection, databases: t.Sequence[int],
              batch: int = 500) -> t.Dict[str, int]:
    """DUMP + PTTL every key of ``source`` and RESTORE ... REPLACE it on ``target``, pipelined."""
    copied: t.Dict[str, int] = {}
    for db in databases:
        source.call("SELECT", db)
        try:
            target.call("SELECT", db)
        except RedisReplyError as exc:
            raise RunbookError("SELECT %d on the target Redis at %s failed: %s" % (db, target.where, exc.text))
        count = 0
        cursor = b"0"
        while True:
            cursor, keys = source.call("SCAN", cursor, "COUNT", batch)
            if keys:
                count += _copy_batch(source, target, db, keys)
            if cursor in (b"0", 0, "0"):
                break
        copied["db%d" % db] = count
    return copied


def _copy_batch(source: RedisConnection, target: RedisConnection, db: int, keys: t.Sequence[bytes]) -> int:
    replies = source.pipeline([c for key in keys for c in (("DUMP", key), ("PTTL", key))])
    commands: t.List[t.Tuple[str, bytes, int, bytes, str]] = []
    for index, key in enumerate(keys):
        payload, ttl = replies[2 * index], replies[2 * index + 1]
        if payload is None or isinstance(payload, RedisReplyError):
            continue  # expired or deleted between SCAN and DUMP
        commands.append(("RESTORE", key, ttl if isinstance(ttl, int) and ttl > 0 else 0, payload, "REPLACE"))
    for command, reply in zip(commands, target.pipeline(commands)):
        if isinstance(reply, RedisReplyError):
            if reply.code == "NOPERM":
                raise permission_error(target, reply, "RESTORE", "+restore (and +flushall with flush)")
            raise RunbookError("RESTORE of key %r into db %d of Redis at %s failed: %s"
                               % (_show_key(command[1]), db, target.where, reply.text))
    return len(commands)


def _show_key(key: t.Union[bytes, str]) -> str:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- method=file: the server's files

def service_commands(opts: RedisSnapshotOptions) -> t.Tuple[t.List[str], t.List[str]]:
    """``(stop argv, start argv)``: a systemd unit, or the two commands (the argument spec requires one
    or the other with method=file)."""
    if opts.service_name:
        # "--": a unit name is never read as an option of systemctl.
        return (["systemctl", "stop", "--", opts.service_name], ["systemctl", "start", "--", opts.service_name])
    return list(t.cast(t.List[str], opts.stop_command)), list(t.cast(t.List[str], opts.start_command))


def run_service_command(argv: t.List[str], what: str, timeout: float) -> None:
    # stderr goes to a file, not a pipe: a daemon started by the command may keep a pipe open.
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunbookError("cannot %s Redis with %s: %s" % (what, argv[0], exc))
        if proc.returncode != 0:
            errors.seek(0)
            detail = errors.read()[-2000:].decode("utf-8", "replace").strip() or "no error output"
            raise RunbookError("%s of Redis failed: %s exited with status %s: %s"
                               % (what, " ".join(argv[:3]), proc.returncode, detail))


@dataclasses.dataclass
class DataFiles:
    """Where the server keeps its data, and its config file with the AOF switched off when it uses one."""

    directory: str
    rdb_path: str
    aof_path: str
    config_file: str
    original_config: bytes = b""
    edited_config: bytes = b""

    @property
    def appendonly(self) -> bool:
        return bool(self.edited_config)


def _config_or_empty(conn: RedisConnection, name: str) -> str:
    try:
        return conn.config_get(name) or ""
    except RedisReplyError:
        return ""


def data_files(connection: RedisConnectionOptions, config_file: str) -> DataFiles:
    """The running server's data files; refused when they are not on the managed host, or when the
    AOF is on and cannot be switched off for the restart (no config file, or no ``appendonly`` line)."""
    with connection.connect() as conn:
        directory = conn.config_get("dir") or ""
        dbfilename = conn.config_get("dbfilename") or "dump.rdb"
        appendonly = conn.config_get("appendonly") == "yes"
        aof_name = _config_or_empty(conn, "appenddirname") or _config_or_empty(conn, "appendfilename")
    if not os.path.isdir(directory):
        raise RunbookError("the data directory %r of Redis at %s is not on the managed host (method=file "
                           "needs local files; use method=keys)" % (directory, connection.where))
    files = DataFiles(directory=directory, rdb_path=os.path.join(directory, dbfilename),
                      aof_path=os.path.join(directory, aof_name) if appendonly and aof_name else "",
                      config_file=config_file)
    if appendonly:
        if not config_file:
            raise RunbookError("appendonly is on and Redis at %s runs without a config file: cannot start it with "
                               "the AOF off for the restore" % connection.where)
        files.original_config, files.edited_config = config_without_aof(config_file)
    return files


_APPENDONLY_RE = re.compile(rb"^(\s*appendonly\s+)(\S+)(.*)$", re.IGNORECASE | re.MULTILINE)


def config_without_aof(path: str) -> t.Tuple[bytes, bytes]:
    """``(original, edited)`` contents of the config file, the edited one with appendonly off."""
    try:
        with open(path, "rb") as handle:
            original = handle.read()
    except OSError as exc:
        raise RunbookError("cannot read the Redis config file %s: %s" % (path, exc.strerror or exc))
    matches = list(_APPENDONLY_RE.finditer(original))
    if not matches or matches[-1].group(2).strip(b"\"'").lower() != b"yes":
        raise RunbookError("appendonly is on but %s has no 'appendonly yes' line (set on the command line or in an "
                           "included file?): cannot start Redis with the AOF off for the restore" % path)
    edited = _APPENDONLY_RE.sub(lambda m: m.group(1) + b"no" + m.group(3), original)
    return original, edited


def _replace_file(path: str, data: bytes) -> None:
    info = os.stat(path)
    temp = "%s.runbook-%s" % (path, secrets.token_hex(4))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temp, info.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(temp, info.st_uid, info.st_gid)
    os.replace(temp, path)


def _aside(path: str, backup_id: str) -> str:
    target = "%s.pre-restore-%s" % (path, backup_id)
    if os.path.exists(target):
        target = "%s-%s" % (target, secrets.token_hex(3))
    os.rename(path, target)
    return target


# --------------------------------------------------------------------------- method=file: the steps

def restore_file(opts: RedisSnapshotOptions, snapshot: StoredSnapshot, before: t.Dict[str, t.Any]) -> Result:
    """Install the RDB as the server's data file: stage it, stop, move the old files aside, start with the
    AOF off, switch it back on and wait for the rewrite (so the restored data survives the next restart)."""
    manifest = snapshot.manifest
    files = data_files(opts.connection, before["config_file"])
    staged = stage_rdb(opts, snapshot, files)
    conn, moved = _swap_and_start(opts, files, staged, manifest["id"])
    previous = [aside for _original, aside in moved]
    with conn:
        loaded = keys_per_db(conn.info("keyspace"))
        if files.appendonly:
            try:
                _reenable_aof(conn, files, float(opts.wait_timeout))
            except RunbookError as exc:
                raise RunbookError("backup %s is loaded in Redis at %s but switching the AOF back on failed: %s; "
                                   "%s still says 'appendonly no' so a restart does not lose the data"
                                   % (manifest["id"], conn.where, exc.msg, files.config_file),
                                   changed=True, keys_restored=loaded, previous_files=previous)
    problems = keyspace_differences(recorded_keys(manifest), loaded, "the restored server")
    result: Result = {"changed": True, "keys_restored": loaded, "previous_files": previous,
                      "verified": [verified_entry(manifest, "load", problems, keys=loaded)]}
    if problems:
        raise RunbookError("backup %s was installed but the server does not hold the recorded keys: %s"
                           % (manifest["id"], "; ".join(problems)), **result)
    result["msg"] = "restored backup %s as %s of Redis at %s%s" % (
        manifest["id"], files.rdb_path, opts.connection.where,
        " (AOF rewritten from the restored data)" if files.appendonly else "")
    return result


def stage_rdb(opts: RedisSnapshotOptions, snapshot: StoredSnapshot, files: DataFiles) -> str:
    """Fetch and prove the RDB next to its final place, before the server is touched; returns its path."""
    staged = os.path.join(files.directory, ".%s.restore-%s" % (os.path.basename(files.rdb_path), secrets.token_hex(4)))
    size = snapshot.rdb_size
    inspector = RDBInspector(snapshot.entry["name"], crc=size <= PYTHON_CRC_LIMIT or not shutil.which("redis-check-rdb"))
    try:
        local_file = LocalFile(staged, files.directory, "data directory of Redis at %s" % opts.connection.where,
                               size).open()
        read_into_file(snapshot, local_file, sink=Tee(local_file, inspector))
        inspector.check_crc()
        if os.geteuid() == 0:
            owner = os.stat(files.rdb_path) if os.path.exists(files.rdb_path) else os.stat(files.directory)
            os.chown(staged, owner.st_uid, owner.st_gid)
    except LocalError as exc:
        unlink_quietly(staged)
        raise LocalError("file restore of backup %s stopped before Redis was stopped: %s"
                         % (snapshot.id, exc.msg), backup_id=snapshot.id)
    except BaseException:
        unlink_quietly(staged)
        raise
    return staged


def _swap_and_start(opts: RedisSnapshotOptions, files: DataFiles, staged: str,
                    backup_id: str) -> t.Tuple[RedisConnection, t.List[t.Tuple[str, str]]]:
    """Stop, move the former files aside, install the staged RDB, start; returns a connection once the
    data is loaded and ``(original, aside)`` pairs. A failure before the start puts everything back."""
    stop, start = service_commands(opts)
    timeout = float(opts.wait_timeout)
    moved: t.List[t.Tuple[str, str]] = []
    started = installed = False
    try:
        run_service_command(stop, "stop", timeout)
        _wait_down(opts.connection, timeout)
        for path in (files.rdb_path, files.aof_path):
            if path and os.path.exists(path):
                moved.append((path, _aside(path, backup_id)))
        os.rename(staged, files.rdb_path)
        installed = True
        if files.appendonly:
            _replace_file(files.config_file, files.edited_config)
        run_service_command(start, "start", timeout)
        started = True
        return _wait_up(opts.connection, timeout), moved
    except BaseException as exc:
        if not started:
            _rollback(staged, files.rdb_path if installed else "", moved, files)
            try:
                run_service_command(start, "start", timeout)
            except RunbookError:
                pass
            if isinstance(exc, RunbookError):
                raise RunbookError("file restore of backup %s failed and was rolled back: %s" % (backup_id, exc.msg))
        raise


def _rollback(staged: str, installed: str, moved: t.List[t.Tuple[str, str]], files: DataFiles) -> None:
    try:
        if os.path.exists(staged):
            os.unlink(staged)
        if installed and os.path.exists(installed):
            os.unlink(installed)
        for original, aside in reversed(moved):
            if os.path.exists(aside) and not os.path.exists(original):
                os.rename(aside, original)
        if files.appendonly:
            _replace_file(files.config_file, files.original_config)
    except OSError:
        pass


def _wait_down(connection: RedisConnectionOptions, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection.connect(timeout=1, authenticate=False).close()
        except RunbookError:
            return
        time.sleep(0.1)
    raise RunbookError("Redis at %s still accepts connections %ss after the stop command" % (connection.where, timeout))


def _wait_up(connection: RedisConnectionOptions, timeout: float) -> RedisConnection:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            conn = connection.connect()
        except RunbookError as exc:
            last = exc.msg
        else:
            try:
                if info_int(conn.info("persistence"), "loading") == 0:
                    return conn
                last = "still loading"
            except RedisReplyError as exc:
                last = exc.text
            conn.close()
        time.sleep(0.1)
    raise RunbookError("Redis at %s did not come back within %ss after the start command: %s"
                       % (connection.where, timeout, last))


def _reenable_aof(conn: RedisConnection, files: DataFiles, timeout: float) -> None:
    """``CONFIG SET appendonly yes`` (which rewrites the AOF from the loaded data), wait for the rewrite,
    then put the original config file back."""
    try:
        rewrites = info_int(conn.info("persistence"), "aof_rewrites")
        conn.call("CONFIG", "SET", "appendonly", "yes")
    except RedisReplyError as exc:
        raise RunbookError(exc.text)
    deadline = time.monotonic() + timeout
    while True:
        info = conn.info("persistence")
        done = (info_int(info, "aof_enabled") == 1 and info_int(info, "aof_rewrite_in_progress") == 0
                and info_int(info, "aof_rewrite_scheduled") == 0
                and ("aof_rewrites" not in info or info_int(info, "aof_rewrites") > rewrites))
        if done:
            if info.get("aof_last_bgrewrite_status") != "ok":
                raise RunbookError("the AOF rewrite on Redis at %s failed (aof_last_bgrewrite_status %s); the data "
                                   "is loaded but not yet persisted in the AOF"
                                   % (conn.where, info.get("aof_last_bgrewrite_status")))
            break
        if time.monotonic() > deadline:
            raise RunbookError("the AOF rewrite on Redis at %s did not finish within %ss" % (conn.where, timeout))
        time.sleep(0.1)
    _replace_file(files.config_file, files.original_config)
