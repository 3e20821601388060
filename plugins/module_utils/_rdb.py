# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RDB files: what makes a byte stream a whole RDB (``REDIS`` + 4-digit version at the start, opcode
0xFF and the CRC64 at the end), the check of a stored snapshot's RDB (in Python, and by
``redis-check-rdb`` when installed), and where a snapshot's RDB sits in its manifest.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._crc64 import CRC64
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import CHUNK, StreamError, SubprocessSink

KIND = "redis"
OBJECT_NAME = "dump.rdb"
# Below this size the RDB CRC64 is computed in Python alone; above it, redis-check-rdb (C) does it
# when installed, because even the lane-parallel Python CRC64 is far slower than the network.
PYTHON_CRC_LIMIT = 256 * 1024 * 1024
# Redis' own default; a snapshot of a server with more databases records them in its manifest.
DEFAULT_DATABASES = 16

Bytes = t.Union[bytes, bytearray, memoryview]


class Readable(t.Protocol):
    def read(self, size: int = -1) -> bytes: ...


class Writable(t.Protocol):
    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot in the repository: its manifest, the manifest entry of its RDB and the identities
    that decrypt it (empty when none were given)."""

    repository: Repository
    manifest: t.Dict[str, t.Any]
    entry: t.Dict[str, t.Any]
    identities: t.Sequence[t.Any]

    @classmethod
    def find(cls, repository: Repository, set_name: str, backup_id: t.Optional[str],
             identities: t.Sequence[t.Any]) -> "StoredSnapshot":
        """The snapshot ``backup_id`` of ``set_name``, or the newest complete one."""
        manifest = repository.get(KIND, set_name, backup_id)
        return cls(repository, manifest, rdb_object(manifest), identities)

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def rdb_size(self) -> int:
        """Bytes of the RDB before compression and encryption."""
        return int(self.entry.get("raw_size") or 0)

    @property
    def encrypted(self) -> bool:
        return bool(self.entry.get("encrypted", False))

    def read_into(self, destination: t.Any) -> None:
        """Stream the RDB, decrypted and decompressed, into ``destination`` (a writable)."""
        self.repository.read_object(self.manifest, self.entry, destination, self.identities)


def rdb_object(manifest: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The manifest entry of the snapshot's RDB."""
    for entry in manifest.get("objects", []):
        if entry["name"] == OBJECT_NAME:
            return t.cast(t.Dict[str, t.Any], entry)
    raise RunbookError("backup %s has no %s object: not a redis_snapshot backup" % (manifest["id"], OBJECT_NAME))


def recorded_keys(manifest: t.Mapping[str, t.Any]) -> t.Dict[str, int]:
    """Keys per database when the snapshot was taken, as its manifest records them."""
    return t.cast(t.Dict[str, int], manifest.get("redis", {}).get("keys", {}))


def databases_needed(manifest: t.Mapping[str, t.Any]) -> int:
    """How many databases a server needs to load the snapshot."""
    dbs = [int(db[2:]) for db in recorded_keys(manifest)]
    return max(dbs) + 1 if dbs else DEFAULT_DATABASES


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

    def write(self, chunk: Bytes) -> int:
        data = bytes(chunk)
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

    def __init__(self, raw: Readable, inspector: RDBInspector) -> None:
        self.raw = raw
        self.inspector = inspector

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size and size > 0 else CHUNK)
        if data:
            self.inspector.write(data)
        return data


class Tee:
    """A writable that writes every chunk to each of ``sinks`` in turn."""

    def __init__(self, *sinks: Writable) -> None:
        self.sinks = sinks

    def write(self, data: bytes) -> int:
        for sink in self.sinks:
            sink.write(data)
        return len(data)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()


def check_rdb_stream(snapshot: StoredSnapshot) -> t.Dict[str, t.Any]:
    """Decrypt and decompress the RDB, checking header, end opcode and CRC64 (in Python for small
    payloads or when redis-check-rdb is missing; by redis-check-rdb, which also parses every key)."""
    checker = shutil.which("redis-check-rdb")
    python_crc = checker is None or snapshot.rdb_size <= PYTHON_CRC_LIMIT
    inspector = RDBInspector(snapshot.entry["name"], crc=python_crc)
    checked_by: t.List[str] = []
    facts: t.Dict[str, t.Any] = {"crc_checked_by": checked_by}
    sink: t.Optional[SubprocessSink] = None
    if checker:
        # redis-check-rdb reports on stdout.
        sink = SubprocessSink([checker, "/dev/stdin"], name="redis-check-rdb", capture_stdout=True)
    try:
        snapshot.read_into(Tee(inspector, sink) if sink else inspector)
        if sink is not None:
            output = sink.finish()
            sink = None
            match = re.search(r"(\d+) keys read", output)
            if match:
                facts["keys_read"] = int(match.group(1))
            checked_by.append("redis-check-rdb")
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
        checked_by.insert(0, "python")
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
