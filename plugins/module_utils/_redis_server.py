# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A throwaway local ``redis-server`` that loads a stored RDB: proof that a snapshot loads
(``level=load``) and the source of a key-by-key restore. It listens only on a unix socket in a
private 0700 directory (no TCP port) and is killed and removed on every exit path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._names import shown
from ansible_collections.runbook.ops.plugins.module_utils._rdb import DEFAULT_DATABASES, StoredSnapshot
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import RedisConnection, info_int
from ansible_collections.runbook.ops.plugins.module_utils._redis_files import (
    LocalError, LocalFile, directory_problem, read_into_file)

# sun_path holds 108 bytes; redis-server refuses a longer unix socket path.
MAX_SOCKET_PATH = 100


class ThrowawayRedis:
    """``redis-server`` on a private unix socket in a 0700 directory, loading ``dump.rdb`` from it."""

    def __init__(self, spool_dir: t.Optional[str], databases: int = DEFAULT_DATABASES, timeout: float = 3600) -> None:
        server = shutil.which("redis-server")
        if not server:
            raise LocalError("redis-server is not installed on the managed host; it is needed to load the RDB "
                             "(level=load, method=keys)")
        self.server = server
        self.proc: t.Optional["subprocess.Popen[bytes]"] = None
        self.spool = spool_dir or tempfile.gettempdir()
        self.role = "spool directory" if spool_dir else "temporary directory (spool_dir is empty)"
        if not os.path.exists(self.spool):
            raise LocalError("the %s %s does not exist" % (self.role, shown(self.spool, 200)))
        if not os.path.isdir(self.spool):
            raise LocalError("the %s %s is not a directory" % (self.role, shown(self.spool, 200)))
        try:
            self.dir = tempfile.mkdtemp(prefix="runbook-redis-", dir=self.spool)
        except OSError as exc:
            raise directory_problem(self.role, self.spool, exc, "creating a private work directory there")
        os.chmod(self.dir, 0o700)
        self.rdb_path = os.path.join(self.dir, "dump.rdb")
        self.socket_dir = self.dir
        if len(os.fsencode(os.path.join(self.dir, "redis.sock"))) > MAX_SOCKET_PATH:
            # A deep spool_dir: the socket goes to a private directory of its own with a short path.
            try:
                self.socket_dir = tempfile.mkdtemp(prefix="runbook-redis-")
            except OSError as exc:
                self.stop()
                raise directory_problem("temporary directory", tempfile.gettempdir(), exc,
                                        "creating a directory for the local server's socket")
            os.chmod(self.socket_dir, 0o700)
        self.socket = os.path.join(self.socket_dir, "redis.sock")
        self.log = os.path.join(self.dir, "redis.log")
        self.databases = max(DEFAULT_DATABASES, databases)
        self.timeout = timeout

    def spool_rdb(self, snapshot: StoredSnapshot) -> None:
        """The snapshot's RDB as ``dump.rdb`` of this server; a full spool raises :class:`LocalError`."""
        try:
            read_into_file(snapshot, LocalFile(self.rdb_path, self.spool, self.role, snapshot.rdb_size).open())
        except LocalError as exc:
            raise LocalError("%s: free space there or set spool_dir to a directory with room for the RDB" % exc.msg)

    def start(self) -> RedisConnection:
        """Start the server and wait until the RDB is loaded; returns a connection to it."""
        conf = self._write_config()
        try:
            proc = subprocess.Popen([self.server, conf], stdin=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise LocalError("cannot run %s to load the RDB: %s" % (self.server, exc.strerror or exc))
        self.proc = proc
        deadline = time.monotonic() + self.timeout
        while True:
            if proc.poll() is not None:
                raise RunbookError("the local redis-server could not load the RDB (exit status %s): %s"
                                   % (proc.returncode, self.log_tail()))
            if os.path.exists(self.socket):
                conn = self._loaded()
                if conn is not None:
                    return conn
            if time.monotonic() > deadline:
                raise RunbookError("the local redis-server did not finish loading the RDB within %ss" % self.timeout)
            time.sleep(0.05)

    def _loaded(self) -> t.Optional[RedisConnection]:
        """A connection once the server has loaded the RDB; None while it is still loading."""
        try:
            conn = RedisConnection.open_unix(self.socket, timeout=30)
        except RunbookError:
            return None
        try:
            if info_int(conn.info("persistence"), "loading") == 0:
                return conn
        except RunbookError:  # RedisReplyError included (-LOADING)
            pass
        conn.close()
        return None

    def _write_config(self) -> str:
        conf = os.path.join(self.dir, "redis.conf")
        try:
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write("\n".join([
                    "port 0", "unixsocket %s" % self.socket, "unixsocketperm 700", "dir %s" % self.dir,
                    "dbfilename dump.rdb", "save \"\"", "appendonly no", "daemonize no", "logfile %s" % self.log,
                    "databases %d" % self.databases, "rdbchecksum yes", "protected-mode yes", "",
                ]))
        except OSError as exc:
            raise directory_problem(self.role, self.spool, exc, "writing the local server's config %s" % conf)
        return conf

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log, "r", encoding="utf-8", errors="replace") as handle:
                text = handle.read().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.socket_dir != self.dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> "ThrowawayRedis":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
