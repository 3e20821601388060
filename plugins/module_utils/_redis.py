# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How we talk to Redis and handle RDB snapshots.

- ``RedisConnection``: a small RESP2 client over TCP (optionally TLS) or a unix socket, with AUTH
  (password or ACL user) and pipelining. No third-party client is needed on the managed host.
- ``ReplicationSource``: the RDB as a readable stream fetched over the replication protocol
  (``REPLCONF capa eof``, ``REPLCONF rdb-only 1``, ``SYNC``), handling both the ``$<len>`` reply
  (disk-based) and the ``$EOF:<40-byte marker>`` reply (diskless); the marker never reaches the stream.
- ``bgsave_and_wait``: BGSAVE that is really done (not in progress, last status ok, save counter
  advanced); LASTSAVE's one-second resolution is never relied on.
- ``RDBInspector``: header, end opcode and CRC64 (Jones) of an RDB stream.
- ``ThrowawayRedis``: a local ``redis-server`` on a private unix socket, loaded from an RDB file, for
  load verification and key-by-key restores.
- The three operations the module offers: ``backup``, ``verify`` and ``restore``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import (
    UNENCRYPTED_WARNING, backup_result, check_compression, compression_settings, fresh_backup, prune_after_success)
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, Stopwatch, tls_handshake
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    backup_id as backup_id_name, check_params, host_name, local_path, no_control, number, optional, path_segment, shown)
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import (
    CHUNK, NullSink, StreamError, SubprocessSink, decode_stream, load_identities)

KIND = "redis"
OBJECT_NAME = "dump.rdb"
EOF_MARK_LEN = 40
TRANSFER_IDLE_TIMEOUT = 300.0
# Below this size the RDB CRC64 is computed in Python alone; above it, redis-check-rdb (C) does it
# when installed, because even the lane-parallel Python CRC64 is far slower than the network.
PYTHON_CRC_LIMIT = 256 * 1024 * 1024


class RedisReplyError(RunbookError):
    """An error reply (``-ERR ...``, ``-NOPERM ...``) from the server."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.code = text.split(" ", 1)[0] if text else ""


def redis_connection_argspec() -> dict:
    return dict(
        login_host=dict(type="str", default="localhost"),
        login_port=dict(type="int", default=6379),
        login_user=dict(type="str"),
        login_password=dict(type="str", no_log=True),
        tls=dict(type="bool", default=False),
        validate_certs=dict(type="bool", default=True),
        ca_certs=dict(type="str"),
        client_cert_file=dict(type="str"),
        client_key_file=dict(type="str"),
        connect_timeout=dict(type="float", default=10.0),
    )


def tls_context(validate_certs: bool = True, ca_certs: t.Optional[str] = None,
                client_cert_file: t.Optional[str] = None, client_key_file: t.Optional[str] = None) -> ssl.SSLContext:
    """The client TLS context; an unreadable or malformed CA, certificate or key file is named."""
    try:
        context = ssl.create_default_context(cafile=ca_certs or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise RunbookError("ca_certs %s cannot be used as a CA bundle: %s (a PEM file of CA certificates is expected)"
                           % (shown(ca_certs), getattr(exc, "strerror", None) or exc))
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert_file:
        try:
            # An encrypted key is refused (empty passphrase) rather than prompted for on a terminal.
            context.load_cert_chain(client_cert_file, client_key_file or None, password=lambda: b"")
        except (OSError, ssl.SSLError, ValueError) as exc:
            files = "client_cert_file %s" % shown(client_cert_file)
            if client_key_file:
                files += " with client_key_file %s" % shown(client_key_file)
            raise RunbookError("%s cannot be loaded: %s (PEM files of the certificate and of its unencrypted "
                               "private key are expected)" % (files, getattr(exc, "strerror", None) or exc))
    elif client_key_file:
        raise RunbookError("client_key_file is set without client_cert_file")
    return context


# --------------------------------------------------------------------------- RESP client

class RedisConnection:
    """One connection. ``call`` sends a command and returns its reply (error replies raise
    ``RedisReplyError``); ``pipeline`` sends many and returns replies (errors as exceptions)."""

    def __init__(self, host: str = "localhost", port: int = 6379, user: t.Optional[str] = None,
                 password: t.Optional[str] = None, tls: bool = False, validate_certs: bool = True,
                 ca_certs: t.Optional[str] = None, client_cert_file: t.Optional[str] = None,
                 client_key_file: t.Optional[str] = None, connect_timeout: float = 10.0,
                 unix_socket: t.Optional[str] = None) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.unix_socket = unix_socket
        self.connect_timeout = connect_timeout
        self.where = unix_socket or "%s:%s" % (host, port)
        self._buf = bytearray()
        self._pos = 0
        self.sock: t.Any = None
        # The context first: a bad CA or client certificate file is named before any connection is made.
        context = tls_context(validate_certs, ca_certs, client_cert_file, client_key_file) if tls else None
        try:
            if unix_socket:
                raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                raw.settimeout(connect_timeout)
                raw.connect(unix_socket)
            else:
                raw = socket.create_connection((host, port), timeout=connect_timeout)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, ValueError) as exc:
            # ValueError/UnicodeError: a host name the resolver or the IDNA codec refuses.
            raise RunbookError("cannot connect to Redis at %s: %s" % (self.where, getattr(exc, "strerror", None) or exc))
        if context is not None:
            # The socket still has connect_timeout: a plain-text port, which waits for a full command
            # line, fails the handshake within that time and is reported as not speaking TLS.
            raw = tls_handshake(raw, context, host, "Redis at %s" % self.where)
        self.sock = raw
        if password:
            args = ["AUTH", user, password] if user else ["AUTH", password]
            try:
                self.call(*args)
            except RedisReplyError as exc:
                self.close()
                raise RunbookError("authentication to Redis at %s%s failed: %s"
                                   % (self.where, " as user %r" % user if user else "", exc.text))

    @classmethod
    def from_params(cls, params: dict) -> "RedisConnection":
        return cls(params["login_host"], params["login_port"], params.get("login_user"),
                   params.get("login_password"), params.get("tls", False), params.get("validate_certs", True),
                   params.get("ca_certs"), params.get("client_cert_file"), params.get("client_key_file"),
                   params.get("connect_timeout") or 10.0)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def __enter__(self) -> "RedisConnection":
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.close()

    # ---- wire
    @staticmethod
    def encode(args: t.Sequence[t.Any]) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            if isinstance(arg, (bytes, bytearray)):
                data = bytes(arg)
            elif isinstance(arg, int):
                data = str(arg).encode()
            else:
                data = str(arg).encode("utf-8")
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
        return b"".join(out)

    def send(self, payload: bytes) -> None:
        try:
            self.sock.sendall(payload)
        except OSError as exc:
            raise RunbookError("lost the connection to Redis at %s while sending: %s" % (self.where, exc))

    def _fill(self, what: str) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        try:
            chunk = self.sock.recv(CHUNK)
        except socket.timeout:
            raise RunbookError("Redis at %s did not answer in time (%s)" % (self.where, what))
        except OSError as exc:
            raise RunbookError("lost the connection to Redis at %s (%s): %s" % (self.where, what, exc))
        if not chunk:
            raise RunbookError("Redis at %s closed the connection (%s)" % (self.where, what))
        self._buf += chunk

    def read_line(self, what: str = "reply") -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos:end])
                self._pos = end + 2
                return line
            self._fill(what)

    def read_exact(self, size: int, what: str = "reply") -> bytes:
        while len(self._buf) - self._pos < size:
            self._fill(what)
        data = bytes(self._buf[self._pos:self._pos + size])
        self._pos += size
        return data

    def take_buffered(self, limit: int) -> bytes:
        """Bytes already received but not parsed (the start of a bulk transfer)."""
        data = bytes(self._buf[self._pos:self._pos + limit])
        self._pos += len(data)
        return data

    def read_reply(self) -> t.Any:
        line = self.read_line()
        if not line:
            raise RunbookError("Redis at %s sent an empty line where a reply was expected" % self.where)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.read_exact(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self.read_reply() for _index in range(count)]
        raise RunbookError("Redis at %s sent an unexpected reply %r" % (self.where, line[:40]))

    def call(self, *args: t.Any) -> t.Any:
        self.send(self.encode(args))
        reply = self.read_reply()
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def pipeline(self, commands: t.Sequence[t.Sequence[t.Any]]) -> t.List[t.Any]:
        if not commands:
            return []
        self.send(b"".join(self.encode(c) for c in commands))
        return [self.read_reply() for _command in commands]

    # ---- helpers
    def info(self, section: str = "") -> dict:
        text = self.call("INFO", section) if section else self.call("INFO")
        return parse_info(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)

    def config_get(self, name: str) -> t.Optional[str]:
        reply = self.call("CONFIG", "GET", name)
        if isinstance(reply, list) and len(reply) >= 2:
            value = reply[1]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        return None


def parse_info(text: str) -> dict:
    """INFO output to a flat dict; ``keyspace`` is parsed to ``{"db0": {"keys": n, "expires": n}}``."""
    info: dict = {"keyspace": {}}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        if re.match(r"^db\d+$", key):
            fields = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
            info["keyspace"][key] = {k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()}
        else:
            info[key] = value
    return info


def keys_per_db(info: dict) -> t.Dict[str, int]:
    return {db: fields.get("keys", 0) for db, fields in sorted(info.get("keyspace", {}).items(), key=_db_order)}


def _db_order(item: t.Tuple[str, t.Any]) -> int:
    return int(item[0][2:])


def permission_error(conn: RedisConnection, exc: RedisReplyError, operation: str, needs: str) -> RunbookError:
    who = "user %r" % conn.user if conn.user else "the default user"
    return RunbookError("%s on Redis at %s is not allowed for %s: the ACL must grant %s (server said: %s)"
                        % (operation, conn.where, who, needs, exc.text))


# --------------------------------------------------------------------------- RDB checks

_CRC64_POLY = 0x95AC9329AC4BC9B5  # Jones polynomial, reflected (redis crc64.c)


def _crc64_table() -> t.List[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _attempt in range(8):
            crc = (crc >> 1) ^ _CRC64_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC64_TABLE = _crc64_table()


def crc64_simple(data: bytes, crc: int = 0) -> int:
    """Byte-at-a-time table CRC64 (reference implementation, ~8 MiB/s)."""
    table = CRC64_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class CRC64:
    """Streaming CRC64 Jones (as Redis computes it for RDB files). ``update`` then ``value``.

    Fast path without C: the data is cut into ``LANES`` interleaved lanes processed together, each
    step done by C-implemented whole-buffer operations (``bytes.translate`` for the table lookups,
    big-int XOR for combining), and the lane CRCs are merged with GF(2) shift matrices. Short inputs
    use the byte-at-a-time table.
    """

    def __init__(self, lanes: int = 8192, lane_len: int = 128) -> None:
        self.crc = 0
        self.lanes = lanes
        self.lane_len = lane_len
        self.block = lanes * lane_len
        self._pending = b""
        self._planes = _plane_tables()
        self._merge = _merge_tables(lanes, lane_len)

    def update(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + bytes(data)
            self._pending = b""
        view = memoryview(data)
        offset = 0
        while len(view) - offset >= self.block:
            self.crc = self._block(bytes(view[offset:offset + self.block]))
            offset += self.block
        rest = bytes(view[offset:])
        if len(rest) >= 4096:
            self._pending = rest
        else:
            self.crc = crc64_simple(rest, self.crc)

    @property
    def value(self) -> int:
        if self._pending:
            self.crc = crc64_simple(self._pending, self.crc)
            self._pending = b""
        return self.crc

    def _block(self, block: bytes) -> int:
        """CRC of ``block`` continuing from ``self.crc``, lanes interleaved by position."""
        lanes, lane_len = self.lanes, self.lane_len
        # The running CRC is folded in as the initial state of lane 0 (CRC with init c over data
        # equals CRC with init 0 over data whose first 8 bytes are XORed with c).
        first = bytearray(block[:8])
        for i in range(8):
            first[i] ^= (self.crc >> (8 * i)) & 0xFF
        block = bytes(first) + block[8:]
        tables = self._planes
        # Lane i is block[i*lane_len:(i+1)*lane_len]; column j holds byte j of every lane.
        planes = [0] * 8  # CRC state of every lane, byte k of the state in plane k (big ints)
        frombytes = int.from_bytes
        for j in range(lane_len):
            column = block[j::lane_len]
            index = (frombytes(column, "little") ^ planes[0]).to_bytes(lanes, "little")
            new = []
            for k in range(8):
                looked = frombytes(index.translate(tables[k]), "little")
                new.append(looked ^ planes[k + 1] if k < 7 else looked)
            planes = new
        # Merge: crc(A || B) = shift(crc(A), len(B)) ^ crc(B); pairwise, lengths double each level.
        states = [p.to_bytes(lanes, "little") for p in planes]
        count = lanes
        for level_tables in self._merge:
            half = count // 2
            left = [s[0:count:2] for s in states]
            right = [frombytes(s[1:count:2], "little") for s in states]
            shifted = [0] * 8
            for k in range(8):
                src = left[k]
                for out in range(8):
                    shifted[out] ^= frombytes(src.translate(level_tables[k][out]), "little")
            states = [(shifted[out] ^ right[out]).to_bytes(half, "little") for out in range(8)]
            count = half
        return int.from_bytes(bytes(s[0] for s in states), "little")


_PLANE_CACHE: t.List[bytes] = []
_MERGE_CACHE: t.Dict[t.Tuple[int, int], t.List[t.List[t.List[bytes]]]] = {}


def _plane_tables() -> t.List[bytes]:
    if not _PLANE_CACHE:
        for k in range(8):
            _PLANE_CACHE.append(bytes((CRC64_TABLE[i] >> (8 * k)) & 0xFF for i in range(256)))
    return _PLANE_CACHE


def _zeros_operator(nbytes: int) -> t.List[int]:
    """The GF(2) matrix (64 column vectors) mapping a CRC state to its state after ``nbytes`` zero bytes."""
    # One zero byte: state -> T[state & 0xff] ^ (state >> 8), linear in the state.
    one = [crc64_simple(b"\0", 1 << bit) for bit in range(64)]
    result = [1 << bit for bit in range(64)]  # identity
    power = one
    while nbytes:
        if nbytes & 1:
            result = [_apply(power, column) for column in result]
        nbytes >>= 1
        if nbytes:
            power = [_apply(power, column) for column in power]
    return result


def _apply(matrix: t.List[int], vector: int) -> int:
    out = 0
    bit = 0
    while vector:
        if vector & 1:
            out ^= matrix[bit]
        vector >>= 1
        bit += 1
    return out


def _merge_tables(lanes: int, lane_len: int) -> t.List[t.List[t.List[bytes]]]:
    """Per merge level, ``tables[k][out]`` maps byte k of a left CRC to byte ``out`` of it shifted
    past the right part (whose length doubles each level)."""
    key = (lanes, lane_len)
    if key not in _MERGE_CACHE:
        levels = []
        length = lane_len
        count = lanes
        while count > 1:
            matrix = _zeros_operator(length)
            per_byte = []
            for k in range(8):
                values = [_apply(matrix, b << (8 * k)) for b in range(256)]
                per_byte.append([bytes((v >> (8 * out)) & 0xFF for v in values) for out in range(8)])
            levels.append(per_byte)
            length *= 2
            count //= 2
        _MERGE_CACHE[key] = levels
    return _MERGE_CACHE[key]


class RDBInspector:
    """A writable (or a tap on a readable) that checks an RDB stream: ``REDIS`` + 4-digit version at
    the start, opcode 0xFF before the 8-byte CRC64 at the end, and optionally the CRC64 itself."""

    def __init__(self, what: str, crc: bool = False) -> None:
        self.what = what
        self.head = b""
        self.tail = b""
        self.size = 0
        self.crc = CRC64() if crc else None
        self._crc_tail = b""

    def write(self, data: t.Any) -> int:
        data = bytes(data)
        if len(self.head) < 9:
            self.head += data[:9 - len(self.head)]
            if len(self.head) == 9 and not re.match(rb"^REDIS\d{4}$", self.head):
                raise StreamError("rdb", "%s does not start with an RDB header (got %r)" % (self.what, self.head[:9]))
        self.size += len(data)
        self.tail = (self.tail + data)[-9:] if len(data) < 9 else data[-9:]
        if self.crc is not None:
            # Everything except the stored 8-byte checksum is covered by the CRC.
            buffered = self._crc_tail + data
            if len(buffered) > 8:
                self.crc.update(buffered[:-8])
                self._crc_tail = buffered[-8:]
            else:
                self._crc_tail = buffered
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def version(self) -> t.Optional[int]:
        return int(self.head[5:9]) if len(self.head) == 9 and self.head[5:9].isdigit() else None

    @property
    def stored_crc(self) -> int:
        return int.from_bytes(self.tail[-8:], "little")

    def check_end(self) -> None:
        if len(self.head) < 9:
            raise StreamError("rdb", "%s is too short to be an RDB file (%d bytes)" % (self.what, self.size))
        if len(self.tail) < 9 or self.tail[0] != 0xFF:
            raise StreamError("rdb", "%s does not end with the RDB end opcode 0xFF and a checksum "
                                     "(truncated or not an RDB file)" % self.what)

    def check_crc(self) -> t.Optional[str]:
        """None when it matches; 'disabled' when the file was saved without a checksum."""
        self.check_end()
        if self.crc is None:
            return None
        stored = self.stored_crc
        if stored == 0:
            return "disabled"
        computed = self.crc.value
        if computed != stored:
            raise StreamError("rdb", "%s: CRC64 mismatch (stored %016x, computed %016x): the RDB is corrupt"
                              % (self.what, stored, computed))
        return None


class InspectingReader:
    """A readable that passes bytes through an ``RDBInspector``."""

    def __init__(self, raw: t.Any, inspector: RDBInspector) -> None:
        self.raw = raw
        self.inspector = inspector

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size and size > 0 else CHUNK)
        if data:
            self.inspector.write(data)
        return data


class Tee:
    def __init__(self, *sinks: t.Any) -> None:
        self.sinks = sinks

    def write(self, data: t.Any) -> int:
        for sink in self.sinks:
            sink.write(data)
        return len(data)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()


# --------------------------------------------------------------------------- replication fetch

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
        for args in (("REPLCONF", "capa", "eof"), ("REPLCONF", "rdb-only", "1")):
            try:
                conn.call(*args)
            except RedisReplyError as exc:
                if exc.code == "NOPERM":
                    raise permission_error(conn, exc, "REPLCONF", "+info +sync +replconf")
                if args[1] == "rdb-only" and "Unrecognized" in exc.text:
                    continue  # before Redis 7.0: the transfer is still an RDB, we close after it
                raise RunbookError("REPLCONF %s refused by Redis at %s: %s" % (args[1], conn.where, exc.text))
        conn.send(conn.encode(["SYNC"]))
        conn.sock.settimeout(max(TRANSFER_IDLE_TIMEOUT, conn.connect_timeout))
        while True:
            # Keep-alive newlines (a bare "\n") precede the reply while the server prepares the snapshot.
            line = conn.read_line("waiting for the SYNC reply").lstrip(b"\n")
            if not line:
                continue  # keep-alive newlines while the server prepares the snapshot
            if line.startswith(b"-"):
                exc = RedisReplyError(line[1:].decode("utf-8", "replace"))
                if exc.code == "NOPERM":
                    raise permission_error(conn, exc, "SYNC", "+info +sync +replconf")
                raise RunbookError("SYNC refused by Redis at %s: %s" % (conn.where, exc.text))
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


# --------------------------------------------------------------------------- BGSAVE

def _int(info: dict, key: str, default: int = 0) -> int:
    try:
        return int(info.get(key, default))
    except (TypeError, ValueError):
        return default


def bgsave_and_wait(conn: RedisConnection, timeout: float, poll: float = 0.1) -> dict:
    """Run a BGSAVE of our own and wait until it really finished. Returns facts about the wait."""
    deadline = time.monotonic() + timeout
    facts = {"waited_for_running_bgsave": False}

    def persistence() -> dict:
        try:
            return conn.info("persistence")
        except RedisReplyError as exc:
            if exc.code == "NOPERM":
                raise permission_error(conn, exc, "INFO", "+info")
            raise

    def wait_idle(what: str) -> dict:
        while True:
            info = persistence()
            if _int(info, "rdb_bgsave_in_progress") == 0:
                return info
            if time.monotonic() > deadline:
                raise RunbookError("BGSAVE on Redis at %s: %s did not finish within %ss" % (conn.where, what, timeout))
            time.sleep(poll)

    info = persistence()
    if _int(info, "rdb_bgsave_in_progress"):
        facts["waited_for_running_bgsave"] = True
        info = wait_idle("a BGSAVE that was already running")
    while True:
        before = _int(info, "rdb_saves", -1)
        try:
            reply = conn.call("BGSAVE")
        except RedisReplyError as exc:
            if exc.code == "NOPERM":
                raise permission_error(conn, exc, "BGSAVE", "+bgsave +info +config|get")
            if "already in progress" in exc.text:
                facts["waited_for_running_bgsave"] = True
                info = wait_idle("a BGSAVE started by someone else")
                continue
            raise RunbookError("BGSAVE refused by Redis at %s: %s" % (conn.where, exc.text))
        break
    if "rdb_saves" not in info:
        raise RunbookError("Redis at %s does not report rdb_saves in INFO persistence (Redis 7.0 or later is "
                           "needed for method=bgsave; use method=replication)" % conn.where)
    while True:
        info = persistence()
        if _int(info, "rdb_bgsave_in_progress") == 0 and _int(info, "rdb_saves", -1) > before:
            break
        if time.monotonic() > deadline:
            raise RunbookError("BGSAVE on Redis at %s did not finish within %ss (%s)" % (conn.where, timeout, reply))
        time.sleep(poll)
    if info.get("rdb_last_bgsave_status") != "ok":
        raise RunbookError("BGSAVE on Redis at %s failed: rdb_last_bgsave_status is %r (see the Redis log: "
                           "disk full or the data directory not writable?)"
                           % (conn.where, info.get("rdb_last_bgsave_status")))
    facts["rdb_saves"] = _int(info, "rdb_saves")
    return facts


# --------------------------------------------------------------------------- local files (spool, data directory)

class LocalError(RunbookError):
    """A problem of the managed host (a full or read-only spool or data directory, no redis-server), not of
    the backup: it fails the task instead of becoming a verification problem, so a good backup is never
    called bad because the place it was unpacked into could not take it."""


_DIRECTORY_STATES = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its disk quota", errno.EROFS: "is read-only",
                     errno.EACCES: "is not writable", errno.EPERM: "is not writable",
                     errno.ENOTDIR: "is not a directory", errno.ENOENT: "does not exist",
                     errno.EFBIG: "does not take a file this large"}


def directory_problem(role: str, directory: str, exc: BaseException, doing: str) -> LocalError:
    """``the spool directory /x is full (writing ... failed: No space left on device)``."""
    code = getattr(exc, "errno", None)
    state = _DIRECTORY_STATES.get(code, "could not be used") if isinstance(code, int) else "could not be used"
    cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return LocalError("the %s %s %s (%s failed: %s)" % (role, shown(directory, 200), state, doing, cause))


class LocalFile:
    """A 0600 file created under ``directory`` and written as the last stage of a read from the
    repository. It remembers the first write error, so that a full or read-only file system is
    reported as the directory's fault and never as a corrupt or truncated backup."""

    def __init__(self, path: str, directory: str, role: str, needed: int = 0) -> None:
        self.path = path
        self.directory = directory
        self.role = role
        self.needed = needed
        self.name = path
        self.written = 0
        self.error: t.Optional[OSError] = None
        self._handle: t.Any = None

    def open(self) -> "LocalFile":
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise directory_problem(self.role, self.directory, exc, "creating %s" % self.path)
        self._handle = os.fdopen(fd, "wb")
        return self

    def write(self, data: t.Any) -> int:
        try:
            self._handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise

    def writable(self) -> bool:
        return True

    def failure(self) -> LocalError:
        exc = self.error or OSError("write failed")
        problem = directory_problem(self.role, self.directory, exc, "writing %s after %d bytes" % (self.path, self.written))
        if self.needed and getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            problem.msg += "; the file needs %d bytes there" % self.needed
            problem.args = (problem.msg,)
        return problem

    def finish(self) -> None:
        """Flush, fsync and close: a delayed ENOSPC (network file systems) surfaces here."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as exc:
            self.error = self.error or exc
            self.abort()
            raise self.failure()
        self._handle = None

    def abort(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass
            self._handle = None


def read_into_file(repo: Repository, manifest: dict, entry: dict, target: LocalFile, identities: t.Sequence[t.Any],
                   sink: t.Any = None) -> None:
    """Stream an object from the repository into ``target`` (through ``sink``, which writes to it, when
    given). A failure of the file is a :class:`LocalError`; a failure of the stored bytes stays what it is."""
    try:
        repo.read_object(manifest, entry, sink if sink is not None else target, identities)
    except RunbookError as exc:
        target.abort()
        # Bytes that differ from the manifest are the backup's fault whatever else went wrong.
        if target.error is not None and getattr(exc, "stage", None) != "checksum":
            raise target.failure() from None
        raise
    except OSError:
        target.abort()
        if target.error is not None:
            raise target.failure() from None
        raise
    target.finish()


# --------------------------------------------------------------------------- throwaway server

# sun_path holds 108 bytes; redis-server refuses a longer unix socket path.
MAX_SOCKET_PATH = 100


class ThrowawayRedis:
    """``redis-server`` on a private unix socket in a 0700 directory, loading ``dump.rdb`` from it."""

    def __init__(self, spool_dir: t.Optional[str], databases: int = 16, timeout: float = 3600) -> None:
        self.server = shutil.which("redis-server")
        if not self.server:
            raise LocalError("redis-server is not installed on the managed host; it is needed to load the RDB "
                             "(level=load, method=keys)")
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
        self.databases = max(16, databases)
        self.timeout = timeout
        self.proc: t.Optional[subprocess.Popen] = None

    def spool_rdb(self, repo: Repository, manifest: dict, entry: dict, identities: t.Sequence[t.Any]) -> None:
        """The backup's RDB as ``dump.rdb`` of this server; a full spool raises :class:`LocalError`."""
        needed = int(entry.get("raw_size") or 0)
        try:
            read_into_file(repo, manifest, entry, LocalFile(self.rdb_path, self.spool, self.role, needed).open(),
                           identities)
        except LocalError as exc:
            raise LocalError("%s: free space there or set spool_dir to a directory with room for the RDB" % exc.msg)

    def start(self) -> RedisConnection:
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
        try:
            self.proc = subprocess.Popen([self.server, conf], stdin=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise LocalError("cannot run %s to load the RDB: %s" % (self.server, exc.strerror or exc))
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RunbookError("the local redis-server could not load the RDB (exit status %s): %s"
                                   % (self.proc.returncode, self.log_tail()))
            if os.path.exists(self.socket):
                try:
                    conn = RedisConnection(unix_socket=self.socket, connect_timeout=30)
                    info = conn.info("persistence")
                    if _int(info, "loading") == 0:
                        return conn
                    conn.close()
                except (RunbookError, RedisReplyError):
                    pass
            if time.monotonic() > deadline:
                raise RunbookError("the local redis-server did not finish loading the RDB within %ss" % self.timeout)
            time.sleep(0.05)

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

    def __exit__(self, *exc: t.Any) -> None:
        self.stop()


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
                replies = source.pipeline([c for key in keys for c in (("DUMP", key), ("PTTL", key))])
                commands = []
                for index, key in enumerate(keys):
                    payload, ttl = replies[2 * index], replies[2 * index + 1]
                    if payload is None or isinstance(payload, RedisReplyError):
                        continue
                    commands.append(("RESTORE", key, ttl if isinstance(ttl, int) and ttl > 0 else 0, payload, "REPLACE"))
                for key_cmd, reply in zip(commands, target.pipeline(commands)):
                    if isinstance(reply, RedisReplyError):
                        if reply.code == "NOPERM":
                            raise permission_error(target, reply, "RESTORE", "+restore (and +flushall with flush)")
                        raise RunbookError("RESTORE of key %r into db %d of Redis at %s failed: %s"
                                           % (_show_key(key_cmd[1]), db, target.where, reply.text))
                count += len(commands)
            if cursor in (b"0", 0, "0"):
                break
        copied["db%d" % db] = count
    return copied


def _show_key(key: t.Any) -> str:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- operations

def default_set(params: dict) -> str:
    return params.get("set") or "%s-%s" % (params["login_host"], params["login_port"])


def _server_facts(conn: RedisConnection, needs: str = "+info") -> dict:
    try:
        info = conn.info()
    except RedisReplyError as exc:
        if exc.code == "NOPERM":
            raise permission_error(conn, exc, "INFO", needs)
        raise RunbookError("INFO on Redis at %s failed: %s" % (conn.where, exc.text))
    return {
        "version": info.get("redis_version"),
        "mode": info.get("redis_mode"),
        "role": info.get("role"),
        "used_memory": _int(info, "used_memory"),
        "keys": keys_per_db(info),
        "expires": {db: fields.get("expires", 0) for db, fields in info.get("keyspace", {}).items()},
        "config_file": info.get("config_file") or "",
        "aof_enabled": _int(info, "aof_enabled"),
    }


def _identities(params: dict) -> t.List[t.Any]:
    return load_identities(params.get("encryption_identity"))


def backup(params: dict, check_mode: bool) -> dict:
    watch = Stopwatch()
    repo = Repository.from_options(params)
    set_name = default_set(params)
    warnings: t.List[str] = []
    fresh = fresh_backup(repo, KIND, set_name, params.get("max_age"))
    if fresh is not None:
        result = backup_result(fresh, watch.elapsed, skipped=True)
        result["msg"] = "backup %s of set %r is younger than max_age %s: nothing to do" % (
            fresh["id"], set_name, params.get("max_age"))
        return result
    if not params.get("encryption_recipients"):
        warnings.append(UNENCRYPTED_WARNING)
    method = params.get("method") or "replication"
    with RedisConnection.from_params(params) as conn:
        facts = _server_facts(conn, "+info +sync +replconf" if method == "replication"
                              else "+info +bgsave +config|get")
        if check_mode:
            result = backup_result(None, watch.elapsed)
            result.update(changed=True, warnings=warnings,
                          msg="would snapshot Redis %s at %s by %s into %s, set %r (%d keys, %d bytes used memory)"
                          % (facts["version"], conn.where, method, repo.url, set_name,
                             sum(facts["keys"].values()), facts["used_memory"]))
            return result
        extra_facts: dict = {}
        inspector = RDBInspector("the RDB from %s" % conn.where)
        with repo.new_backup(KIND, set_name, params.get("labels")) as writer:
            if method == "replication":
                source: t.Any = ReplicationSource(conn)
                extra_facts["transfer"] = "diskless" if source.diskless else "disk"
                size_hint = source.length or facts["used_memory"]
                entry = writer.add_object(OBJECT_NAME, InspectingReader(source, inspector),
                                          compression=params["compression"], level=params.get("compression_level"),
                                          threads=params.get("compression_threads") or 0,
                                          recipients=params.get("encryption_recipients") or [], size_hint=size_hint)
            else:
                extra_facts.update(bgsave_and_wait(conn, float(params.get("wait_timeout") or 3600)))
                path = _rdb_path(conn)
                try:
                    handle = open(path, "rb")  # pylint: disable=consider-using-with
                except OSError as exc:
                    raise RunbookError("cannot read the RDB file %s on the managed host: %s (method=bgsave needs the "
                                       "Redis data directory on the managed host; use method=replication for a "
                                       "remote server)" % (path, exc.strerror or exc))
                with handle:
                    entry = writer.add_object(OBJECT_NAME, InspectingReader(handle, inspector),
                                              compression=params["compression"],
                                              level=params.get("compression_level"),
                                              threads=params.get("compression_threads") or 0,
                                              recipients=params.get("encryption_recipients") or [],
                                              size_hint=os.fstat(handle.fileno()).st_size)
                extra_facts["rdb_path"] = path
            inspector.check_end()
            redis_facts = {
                "version": facts["version"], "rdb_version": inspector.version, "method": method,
                "keys": facts["keys"], "expires": facts["expires"], "used_memory": facts["used_memory"],
                "role": facts["role"], "rdb_size": entry["raw_size"],
                "rdb_checksum": "%016x" % inspector.stored_crc,
            }
            redis_facts.update(extra_facts)
            manifest = writer.commit(
                source={"host": params["login_host"], "port": params["login_port"],
                        "server_version": facts["version"], "user": params.get("login_user") or "default"},
                fmt="rdb", compression=compression_settings(params), extra={"redis": redis_facts})
    pruned = prune_after_success(repo, KIND, set_name, params.get("retention"))
    result = backup_result(manifest, watch.elapsed, pruned=pruned)
    result.update(warnings=warnings, msg="snapshot %s of Redis at %s:%s stored in %s (%d bytes RDB, %d stored)"
                  % (manifest["id"], params["login_host"], params["login_port"], repo.url,
                     manifest["raw_size"], manifest["size"]))
    return result


def _rdb_path(conn: RedisConnection) -> str:
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


def _manifest_entry(manifest: dict) -> dict:
    for entry in manifest.get("objects", []):
        if entry["name"] == OBJECT_NAME:
            return entry
    raise RunbookError("backup %s has no %s object: not a redis_snapshot backup" % (manifest["id"], OBJECT_NAME))


def _compare_keys(expected: t.Dict[str, int], actual: t.Dict[str, int], where: str) -> t.List[str]:
    problems = []
    for db in sorted(set(expected) | set(actual), key=lambda d: int(d[2:])):
        if expected.get(db, 0) != actual.get(db, 0):
            problems.append("%s: %s keys in %s, %s in the manifest" % (db, actual.get(db, 0), where, expected.get(db, 0)))
    return problems


def _max_db(manifest: dict) -> int:
    dbs = [int(db[2:]) for db in manifest.get("redis", {}).get("keys", {})]
    return max(dbs) + 1 if dbs else 16


def verify(params: dict) -> dict:
    watch = Stopwatch()
    repo = Repository.from_options(params)
    set_name = default_set(params)
    manifest = repo.get(KIND, set_name, params.get("backup_id"))
    entry = _manifest_entry(manifest)
    level = params.get("level") or "rdb"
    identities = _identities(params)
    verified = verify_manifest(repo, manifest, entry, level, identities, params)
    result = {"changed": False, "backup_id": manifest["id"], "manifest": manifest, "verified": verified,
              "duration_s": watch.elapsed, "skipped": False, "pruned": [], "keys_restored": {},
              "throughput_mib_s": round(entry.get("raw_size", 0) / 1048576.0 / watch.elapsed, 1) if watch.elapsed else 0.0}
    if verified["ok"]:
        result["msg"] = "backup %s verified at level %s" % (manifest["id"], level)
    else:
        result["_fail_msg"] = "backup %s failed verification at level %s: %s" % (
            manifest["id"], level, "; ".join(verified["problems"]))
    return result


def verify_manifest(repo: Repository, manifest: dict, entry: dict, level: str, identities: t.Sequence[t.Any],
                    params: dict) -> dict:
    problems: t.List[str] = []
    verified = {"level": level, "ok": False, "problems": problems, "backup_id": manifest["id"]}
    encrypted = entry.get("encrypted", False)
    try:
        if level == "checksum":
            reader = repo.backend.open_reader(repo.object_key(manifest, entry["name"]))
            try:
                decode_stream(reader, NullSink(), "none", expected_sha256=entry.get("sha256"),
                              expected_size=entry.get("size"), object_name=entry["name"])
            finally:
                reader.close()
        elif level == "rdb":
            if encrypted and not identities:
                raise RunbookError("level=rdb needs encryption_identity: backup %s is encrypted" % manifest["id"])
            verified.update(check_rdb_stream(repo, manifest, entry, identities))
        else:
            if encrypted and not identities:
                raise RunbookError("level=load needs encryption_identity: backup %s is encrypted" % manifest["id"])
            with ThrowawayRedis(params.get("spool_dir"), _max_db(manifest), float(params.get("wait_timeout") or 3600)) as local:
                local.spool_rdb(repo, manifest, entry, identities)
                conn = local.start()
                with conn:
                    loaded = keys_per_db(conn.info("keyspace"))
                verified["keys"] = loaded
                problems += _compare_keys(manifest.get("redis", {}).get("keys", {}), loaded, "the loaded RDB")
    except LocalError as exc:
        # Not a verdict on the backup: the check itself could not be done here.
        raise LocalError("verify level=%s of backup %s could not be done on the managed host, the backup was not "
                         "judged: %s" % (level, manifest["id"], exc.msg), backup_id=manifest["id"])
    except RunbookError as exc:
        problems.append(exc.msg)
    verified["ok"] = not problems
    return verified


def check_rdb_stream(repo: Repository, manifest: dict, entry: dict, identities: t.Sequence[t.Any]) -> dict:
    """Decrypt and decompress the RDB, checking header, end opcode and CRC64 (in Python for small
    payloads or when redis-check-rdb is missing; by redis-check-rdb, which also parses every key)."""
    checker = shutil.which("redis-check-rdb")
    size = int(entry.get("raw_size") or 0)
    python_crc = checker is None or size <= PYTHON_CRC_LIMIT
    inspector = RDBInspector(entry["name"], crc=python_crc)
    facts: dict = {"crc_checked_by": []}
    sink: t.Optional[SubprocessSink] = None
    if checker:
        # redis-check-rdb reports on stdout.
        sink = SubprocessSink([checker, "/dev/stdin"], name="redis-check-rdb", capture_stdout=True)
    try:
        repo.read_object(manifest, entry, Tee(inspector, sink) if sink else inspector, identities)
        if sink is not None:
            output = sink.finish()
            sink = None
            match = re.search(r"(\d+) keys read", output)
            if match:
                facts["keys_read"] = int(match.group(1))
            facts["crc_checked_by"].append("redis-check-rdb")
    except StreamError as exc:
        if sink is not None:
            sink.abort()
            sink = None
        message = _check_rdb_message(exc)
        if python_crc and exc.stage == "redis-check-rdb":
            # The whole stream reached the inspector too: name the CRC mismatch when there is one.
            try:
                inspector.check_crc()
            except StreamError as crc_exc:
                message = "%s; %s" % (crc_exc.msg, message)
        raise RunbookError(message)
    finally:
        if sink is not None:
            sink.abort()
    state = inspector.check_crc()
    if python_crc:
        facts["crc_checked_by"].insert(0, "python")
    facts["rdb_version"] = inspector.version
    facts["rdb_size"] = inspector.size
    if state == "disabled":
        facts["crc_checked_by"] = []
        facts["note"] = "the RDB was saved with rdbchecksum no: there is no CRC64 to check"
    return facts


def _check_rdb_message(exc: StreamError) -> str:
    text = exc.msg
    if "redis-check-rdb" in text:
        lines = [line.strip() for line in text.splitlines()
                 if "ERROR" in line or "error" in line or "CRC" in line or "additional info" in line]
        if lines:
            return "redis-check-rdb found the RDB corrupt: %s" % " ".join(lines[:4])
    return text


# --------------------------------------------------------------------------- restore

def restore(params: dict, check_mode: bool, diff: bool) -> dict:
    watch = Stopwatch()
    repo = Repository.from_options(params)
    set_name = default_set(params)
    manifest = repo.get(KIND, set_name, params.get("backup_id"))
    entry = _manifest_entry(manifest)
    identities = _identities(params)
    if entry.get("encrypted") and not identities:
        raise RunbookError("backup %s is encrypted: encryption_identity is required to restore it" % manifest["id"])
    method = params.get("method") or "keys"
    expected = manifest.get("redis", {}).get("keys", {})
    with RedisConnection.from_params(params) as conn:
        before = _server_facts(conn)
    result = {"changed": True, "backup_id": manifest["id"], "manifest": manifest, "skipped": False, "pruned": [],
              "keys_restored": {}, "verified": None, "duration_s": 0.0, "throughput_mib_s": 0.0}
    if diff:
        result["diff"] = {"before": {"keys": before["keys"]}, "after": {"keys": _expected_after(
            before["keys"], expected, method == "file" or params.get("flush"))}}
    if check_mode:
        result["msg"] = "would restore backup %s (%s keys) into Redis at %s:%s by %s%s" % (
            manifest["id"], sum(expected.values()), params["login_host"], params["login_port"], method,
            " after emptying it" if method == "keys" and params.get("flush") else "")
        result["duration_s"] = watch.elapsed
        return result
    if method == "keys":
        result.update(restore_keys(repo, manifest, entry, identities, params))
    else:
        result.update(restore_file(repo, manifest, entry, identities, params, before))
    result["duration_s"] = watch.elapsed
    result["throughput_mib_s"] = round(entry.get("raw_size", 0) / 1048576.0 / watch.elapsed, 1) if watch.elapsed else 0.0
    return result


def _expected_after(before: t.Dict[str, int], expected: t.Dict[str, int], replace_all: bool) -> t.Dict[str, str]:
    after = {}
    for db in sorted(set(before) | set(expected), key=lambda d: int(d[2:])):
        if replace_all:
            after[db] = str(expected.get(db, 0))
        else:
            after[db] = "%s restored over %s existing" % (expected.get(db, 0), before.get(db, 0))
    return after


def restore_keys(repo: Repository, manifest: dict, entry: dict, identities: t.Sequence[t.Any], params: dict) -> dict:
    """Load the RDB into a local throwaway server, prove the key counts, then copy every key."""
    timeout = float(params.get("wait_timeout") or 3600)
    with ThrowawayRedis(params.get("spool_dir"), _max_db(manifest), timeout) as local:
        try:
            local.spool_rdb(repo, manifest, entry, identities)
        except LocalError as exc:
            raise LocalError("restore of backup %s into Redis at %s:%s stopped before the target was touched: %s"
                             % (manifest["id"], params["login_host"], params["login_port"], exc.msg),
                             backup_id=manifest["id"])
        source = local.start()
        with source:
            loaded = keys_per_db(source.info("keyspace"))
            problems = _compare_keys(manifest.get("redis", {}).get("keys", {}), loaded, "the loaded RDB")
            if problems:
                raise RunbookError("backup %s does not load as recorded, the target was not touched: %s"
                                   % (manifest["id"], "; ".join(problems)))
            with RedisConnection.from_params(params) as target:
                if params.get("flush"):
                    try:
                        target.call("FLUSHALL")
                    except RedisReplyError as exc:
                        if exc.code == "NOPERM":
                            raise permission_error(target, exc, "FLUSHALL", "+flushall")
                        raise RunbookError("FLUSHALL on Redis at %s failed: %s" % (target.where, exc.text))
                copied = copy_keys(source, target, [int(db[2:]) for db in loaded])
    return {"keys_restored": copied, "verified": {"level": "load", "ok": True, "problems": [], "keys": loaded},
            "msg": "restored %d keys of backup %s into Redis at %s:%s" % (
                sum(copied.values()), manifest["id"], params["login_host"], params["login_port"])}


class ServiceControl:
    """How to stop and start the Redis of a ``file`` restore: a systemd unit or two argv lists."""

    def __init__(self, params: dict, timeout: float) -> None:
        self.timeout = timeout
        name = params.get("service_name")
        if name:
            # "--": a unit name is never read as an option of systemctl.
            self.stop_argv = ["systemctl", "stop", "--", name]
            self.start_argv = ["systemctl", "start", "--", name]
        elif params.get("stop_command") and params.get("start_command"):
            self.stop_argv = list(params["stop_command"])
            self.start_argv = list(params["start_command"])
        else:
            raise RunbookError("method=file needs service_name or both stop_command and start_command")

    def run(self, argv: t.List[str], what: str) -> None:
        # stderr goes to a file, not a pipe: a daemon started by the command may keep a pipe open.
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                      timeout=self.timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RunbookError("cannot %s Redis with %s: %s" % (what, argv[0], exc))
            if proc.returncode != 0:
                errors.seek(0)
                detail = errors.read()[-2000:].decode("utf-8", "replace").strip() or "no error output"
                raise RunbookError("%s of Redis failed: %s exited with status %s: %s"
                                   % (what, " ".join(argv[:3]), proc.returncode, detail))


def _wait_down(params: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            probe = RedisConnection(params["login_host"], params["login_port"], connect_timeout=1,
                                    tls=params.get("tls", False), validate_certs=params.get("validate_certs", True),
                                    ca_certs=params.get("ca_certs"), client_cert_file=params.get("client_cert_file"),
                                    client_key_file=params.get("client_key_file"))
            probe.close()
        except RunbookError:
            return
        time.sleep(0.1)
    raise RunbookError("Redis at %s:%s still accepts connections %ss after the stop command"
                       % (params["login_host"], params["login_port"], timeout))


def _wait_up(params: dict, timeout: float) -> RedisConnection:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            conn = RedisConnection.from_params(params)
            try:
                if _int(conn.info("persistence"), "loading") == 0:
                    return conn
                last = "still loading"
            except RedisReplyError as exc:
                last = exc.text
            conn.close()
        except RunbookError as exc:
            last = exc.msg
        time.sleep(0.1)
    raise RunbookError("Redis at %s:%s did not come back within %ss after the start command: %s"
                       % (params["login_host"], params["login_port"], timeout, last))


def _wait_aof_rewrite(conn: RedisConnection, before: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = conn.info("persistence")
        done = (_int(info, "aof_enabled") == 1 and _int(info, "aof_rewrite_in_progress") == 0
                and _int(info, "aof_rewrite_scheduled") == 0
                and ("aof_rewrites" not in info or _int(info, "aof_rewrites") > before))
        if done:
            if info.get("aof_last_bgrewrite_status") != "ok":
                raise RunbookError("the AOF rewrite on Redis at %s failed (aof_last_bgrewrite_status %s); the data "
                                   "is loaded but not yet persisted in the AOF"
                                   % (conn.where, info.get("aof_last_bgrewrite_status")))
            return info
        if time.monotonic() > deadline:
            raise RunbookError("the AOF rewrite on Redis at %s did not finish within %ss" % (conn.where, timeout))
        time.sleep(0.1)


_APPENDONLY_RE = re.compile(rb"^(\s*appendonly\s+)(\S+)(.*)$", re.IGNORECASE | re.MULTILINE)


def _config_or_empty(conn: RedisConnection, name: str) -> str:
    try:
        return conn.config_get(name) or ""
    except RedisReplyError:
        return ""


def _config_without_aof(path: str) -> t.Tuple[bytes, bytes]:
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


def restore_file(repo: Repository, manifest: dict, entry: dict, identities: t.Sequence[t.Any], params: dict,
                 before: dict) -> dict:
    """Install the RDB as the server's data file: stop, move the AOF aside, start with the AOF off, switch
    it back on and wait for the rewrite (so the restored data survives the next restart)."""
    timeout = float(params.get("wait_timeout") or 3600)
    control = ServiceControl(params, timeout)
    with RedisConnection.from_params(params) as conn:
        directory = conn.config_get("dir") or ""
        dbfilename = conn.config_get("dbfilename") or "dump.rdb"
        appendonly = (conn.config_get("appendonly") or "no") == "yes"
        aof_name = _config_or_empty(conn, "appenddirname") or _config_or_empty(conn, "appendfilename")
    if not os.path.isdir(directory):
        raise RunbookError("the data directory %r of Redis at %s:%s is not on the managed host (method=file "
                           "needs local files; use method=keys)" % (directory, params["login_host"], params["login_port"]))
    config_file = before.get("config_file") or ""
    original_config = edited_config = b""
    if appendonly:
        if not config_file:
            raise RunbookError("appendonly is on and Redis at %s:%s runs without a config file: cannot start it with "
                               "the AOF off for the restore" % (params["login_host"], params["login_port"]))
        original_config, edited_config = _config_without_aof(config_file)
    target_path = os.path.join(directory, dbfilename)
    staged = os.path.join(directory, ".%s.restore-%s" % (dbfilename, secrets.token_hex(4)))
    # 1. Fetch and prove the RDB next to its final place, before the server is touched.
    inspector = RDBInspector(entry["name"], crc=int(entry.get("raw_size") or 0) <= PYTHON_CRC_LIMIT
                             or not shutil.which("redis-check-rdb"))
    try:
        local_file = LocalFile(staged, directory, "data directory of Redis at %s:%s" % (
            params["login_host"], params["login_port"]), int(entry.get("raw_size") or 0)).open()
        read_into_file(repo, manifest, entry, local_file, identities, sink=Tee(local_file, inspector))
        inspector.check_crc()
        if os.geteuid() == 0:
            owner = os.stat(target_path) if os.path.exists(target_path) else os.stat(directory)
            os.chown(staged, owner.st_uid, owner.st_gid)
    except LocalError as exc:
        _unlink_quietly(staged)
        raise LocalError("file restore of backup %s stopped before Redis was stopped: %s"
                         % (manifest["id"], exc.msg), backup_id=manifest["id"])
    except BaseException:
        _unlink_quietly(staged)
        raise
    # 2. Stop, swap the files, start.
    moved: t.List[t.Tuple[str, str]] = []
    started = installed = False
    try:
        control.run(control.stop_argv, "stop")
        _wait_down(params, timeout)
        if os.path.exists(target_path):
            moved.append((target_path, _aside(target_path, manifest["id"])))
        if appendonly and aof_name and os.path.exists(os.path.join(directory, aof_name)):
            aof_path = os.path.join(directory, aof_name)
            moved.append((aof_path, _aside(aof_path, manifest["id"])))
        os.rename(staged, target_path)
        installed = True
        if appendonly:
            _replace_file(config_file, edited_config)
        control.run(control.start_argv, "start")
        started = True
        conn = _wait_up(params, timeout)
    except BaseException as exc:
        if not started:
            _rollback(staged, target_path if installed else "", moved, config_file if appendonly else "",
                      original_config)
            try:
                control.run(control.start_argv, "start")
            except RunbookError:
                pass
            if isinstance(exc, RunbookError):
                raise RunbookError("file restore of backup %s failed and was rolled back: %s" % (manifest["id"], exc.msg))
        raise
    with conn:
        loaded = keys_per_db(conn.info("keyspace"))
        if appendonly:
            try:
                rewrites = _int(conn.info("persistence"), "aof_rewrites")
                conn.call("CONFIG", "SET", "appendonly", "yes")
                _wait_aof_rewrite(conn, rewrites, timeout)
            except (RunbookError, RedisReplyError) as exc:
                raise RunbookError("backup %s is loaded in Redis at %s but switching the AOF back on failed: %s; "
                                   "%s still says 'appendonly no' so a restart does not lose the data"
                                   % (manifest["id"], conn.where, getattr(exc, "msg", exc), config_file))
            _replace_file(config_file, original_config)
    problems = _compare_keys(manifest.get("redis", {}).get("keys", {}), loaded, "the restored server")
    result = {"keys_restored": loaded, "previous_files": [aside for _orig, aside in moved],
              "verified": {"level": "load", "ok": not problems, "problems": problems, "keys": loaded},
              "msg": "restored backup %s as %s of Redis at %s:%s%s" % (
                  manifest["id"], target_path, params["login_host"], params["login_port"],
                  " (AOF rewritten from the restored data)" if appendonly else "")}
    if problems:
        result["_fail_msg"] = "backup %s was installed but the server does not hold the recorded keys: %s" % (
            manifest["id"], "; ".join(problems))
    return result


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _rollback(staged: str, target_path: str, moved: t.List[t.Tuple[str, str]], config_file: str,
              original_config: bytes) -> None:
    try:
        if os.path.exists(staged):
            os.unlink(staged)
        if target_path and os.path.exists(target_path):
            os.unlink(target_path)
        for original, aside in reversed(moved):
            if os.path.exists(aside) and not os.path.exists(original):
                os.rename(aside, original)
        if config_file and original_config:
            _replace_file(config_file, original_config)
    except OSError:
        pass


# --------------------------------------------------------------------------- module entry

BACKUP_METHODS = ("replication", "bgsave")
RESTORE_METHODS = ("keys", "file")


def redis_snapshot_argspec() -> dict:
    spec = redis_connection_argspec()
    spec.update(
        state=dict(type="str", choices=["backup", "restore", "verify"], default="backup"),
        method=dict(type="str", choices=list(BACKUP_METHODS + RESTORE_METHODS)),
        level=dict(type="str", choices=["checksum", "rdb", "load"], default="rdb"),
        backup_id=dict(type="str"),
        flush=dict(type="bool", default=False),
        service_name=dict(type="str"),
        stop_command=dict(type="list", elements="str"),
        start_command=dict(type="list", elements="str"),
        spool_dir=dict(type="path"),
        wait_timeout=dict(type="int", default=3600),
    )
    return spec


MAX_WAIT_TIMEOUT = 30 * 86400


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


def _plain_password(what: str, value: t.Any) -> str:
    # Any bytes may be a Redis password (AUTH sends it as a length-prefixed bulk string, so CR/LF in it
    # can never start another command); only a type check, and never the value in a message.
    if not isinstance(value, str):
        raise RunbookError("%s is not a string" % what)
    return value


def validate_params(params: dict) -> None:
    """Every option a user can set is checked before anything is connected to, read or written."""
    check_params(params, {
        "login_host": host_name,
        "login_user": optional(no_control),
        "login_password": _plain_password,
        "ca_certs": optional(local_path),
        "client_cert_file": optional(local_path),
        "client_key_file": optional(local_path),
        "spool_dir": optional(local_path),
        "set": optional(path_segment),
        "backup_id": optional(lambda what, value: backup_id_name(value, what)),
        "service_name": optional(_unit_name),
        "stop_command": _argv_item,
        "start_command": _argv_item,
    })
    if not params.get("login_host"):
        raise RunbookError("login_host is empty")
    for option in ("stop_command", "start_command"):
        if params.get(option) is not None and not params[option]:
            raise RunbookError("%s is an empty list; give the program and its arguments" % option)
    number("login_port", params.get("login_port"), 1, 65535)
    if params.get("connect_timeout") is not None:
        number("connect_timeout", params["connect_timeout"], 0, 86400, above=True)
    wait = params.get("wait_timeout")
    if wait is not None and not 1 <= wait <= MAX_WAIT_TIMEOUT:
        raise RunbookError("wait_timeout must be between 1 and %d seconds (30 days), not %s" % (MAX_WAIT_TIMEOUT, shown(wait)))
    check_compression(params)
    if not params.get("set"):
        path_segment("the default set (login_host-login_port, since set is empty)", default_set(params))


def redis_snapshot(params: dict, check_mode: bool, diff: bool = False) -> dict:
    validate_params(params)
    state = params.get("state") or "backup"
    method = params.get("method")
    if state == "backup" and method and method not in BACKUP_METHODS:
        raise RunbookError("method=%s is a restore method; state=backup takes replication or bgsave" % method)
    if state == "restore" and method and method not in RESTORE_METHODS:
        raise RunbookError("method=%s is a backup method; state=restore takes keys or file" % method)
    if state == "backup":
        return backup(params, check_mode)
    if state == "verify":
        return verify(params)
    return restore(params, check_mode, diff)
