# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An RDB fetched over the replication protocol, as ``redis-cli --rdb`` does: ``REPLCONF capa eof``,
``REPLCONF rdb-only 1`` (Redis 7.0 and later), then ``SYNC``. The server answers ``$<length>`` (a
disk-based transfer) or ``$EOF:<40-byte marker>`` (diskless, the marker follows the payload); the
marker never reaches the stream. The ACL user needs only ``+sync +replconf``.
"""

from __future__ import annotations

import socket
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    RedisConnection, RedisReplyError, UnknownCommand, permission_error)
from ansible_collections.runbook.ops.plugins.module_utils._stream import CHUNK, StreamError

EOF_MARK_LEN = 40
# A server preparing the snapshot sends keep-alive newlines; this long without a byte is a dead transfer.
TRANSFER_IDLE_TIMEOUT = 300.0
REPLICATION_RIGHTS = "+info +sync +replconf"


class ReplicationSource:
    """The RDB payload of a ``SYNC`` as a readable; the end marker of diskless transfers is stripped."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.length: t.Optional[int] = None
        self.marker: t.Optional[bytes] = None
        self.received = 0
        self.done = False
        self._hold = b""
        self.diskless = False
        self._start()

    def _start(self) -> None:
        conn = self.conn
        replconf: t.Tuple[t.Tuple[str, str, str], ...] = (("REPLCONF", "capa", "eof"), ("REPLCONF", "rdb-only", "1"))
        for args in replconf:
            try:
                conn.call(*args)
            except RedisReplyError as exc:
                if exc.code == "NOPERM":
                    raise permission_error(conn, exc, "REPLCONF", REPLICATION_RIGHTS)
                if isinstance(exc, UnknownCommand):
                    raise RunbookError("%s; or use method=bgsave, which does not need it" % exc.text)
                if args[1] == "rdb-only" and "Unrecognized" in exc.text:
                    continue  # before Redis 7.0: the transfer is still an RDB, we close after it
                raise RunbookError("REPLCONF %s refused by Redis at %s: %s" % (args[1], conn.where, exc.text))
        conn.send(conn.encode(conn.renamed(["SYNC"])))
        conn.sock.settimeout(max(TRANSFER_IDLE_TIMEOUT, conn.connect_timeout))
        while True:
            # Keep-alive newlines (a bare "\n") precede the reply while the server prepares the snapshot.
            line = conn.read_line("waiting for the SYNC reply").lstrip(b"\n")
            if not line:
                continue
            if line.startswith(b"-"):
                refused = RedisReplyError(line[1:].decode("utf-8", "replace"))
                if refused.code == "NOPERM":
                    raise permission_error(conn, refused, "SYNC", REPLICATION_RIGHTS)
                if refused.text.startswith("ERR unknown command"):
                    raise RunbookError("%s; or use method=bgsave, which does not need it"
                                       % UnknownCommand(refused.text, "SYNC", conn.where, "SYNC" in conn.command_names).text)
                raise RunbookError("SYNC refused by Redis at %s: %s" % (conn.where, refused.text))
            if line.startswith(b"$EOF:"):
                self.marker = line[5:]
                if len(self.marker) != EOF_MARK_LEN:
                    raise RunbookError("Redis at %s sent a malformed end marker" % conn.where)
                self.diskless = True
                return
            if line.startswith(b"$"):
                self.length = int(line[1:])
                return
            if line.startswith(b"+"):
                continue  # e.g. +FULLRESYNC from servers that answer SYNC like PSYNC
            raise RunbookError("Redis at %s answered SYNC with %r" % (conn.where, line[:60]))

    def _recv(self, size: int) -> bytes:
        buffered = self.conn.take_buffered(size)
        if buffered:
            return buffered
        try:
            return self.conn.sock.recv(size)
        except socket.timeout:
            raise StreamError("source", "Redis at %s sent nothing for %ds after %d bytes of the RDB"
                              % (self.conn.where, TRANSFER_IDLE_TIMEOUT, self.received))
        except OSError as exc:
            raise StreamError("source", "connection to Redis at %s lost after %d bytes of the RDB: %s"
                              % (self.conn.where, self.received, exc))

    def read(self, size: int = -1) -> bytes:
        if self.done:
            return b""
        size = size if size and size > 0 else CHUNK
        if self.length is not None:
            remaining = self.length - self.received
            data = self._recv(min(size, remaining)) if remaining else b""
            if not data and remaining:
                raise StreamError("source", "Redis at %s closed the connection after %d of %d bytes of the RDB"
                                  % (self.conn.where, self.received, self.length))
            self.received += len(data)
            if self.received >= self.length:
                self.done = True
            return data
        marker = self.marker or b""
        while True:
            chunk = self._recv(size)
            if not chunk:
                raise StreamError("source", "Redis at %s closed the connection after %d bytes, before the "
                                            "end marker of the RDB" % (self.conn.where, self.received))
            buffered = self._hold + chunk if self._hold else chunk
            if len(buffered) >= EOF_MARK_LEN and buffered[-EOF_MARK_LEN:] == marker:
                data = buffered[:-EOF_MARK_LEN]
                self._hold = b""
                self.done = True
            else:
                data = buffered[:-EOF_MARK_LEN] if len(buffered) > EOF_MARK_LEN else b""
                self._hold = buffered[-EOF_MARK_LEN:] if len(buffered) > EOF_MARK_LEN else buffered
            if data or self.done:
                self.received += len(data)
                return data
