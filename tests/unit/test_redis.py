"""Pure logic of the Redis helpers: CRC64, the replication reply framing, RDB checks, INFO parsing."""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
import typing as t

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._crc64 import CRC64, crc64_simple
from ansible_collections.runbook.ops.plugins.module_utils._rdb import RDBInspector
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    RedisConnection, RedisConnectionOptions, parse_info)
from ansible_collections.runbook.ops.plugins.module_utils._redis_files import LocalFile, directory_problem
from ansible_collections.runbook.ops.plugins.module_utils._redis_replication import ReplicationSource
from ansible_collections.runbook.ops.plugins.module_utils._redis_restore import config_without_aof
from ansible_collections.runbook.ops.plugins.module_utils._redis_snapshot import (
    RedisSnapshotOptions, run_redis_snapshot)
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import StreamError
from tests.harness.tasks import InvalidParams, make_task, validated


def test_crc64_check_value() -> None:
    assert crc64_simple(b"123456789") == 0xE9C6D914C4B8D9CA
    crc = CRC64()
    crc.update(b"123456789")
    assert crc.value == 0xE9C6D914C4B8D9CA


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65536 * 16 + 7, 3 * 1024 * 1024 + 5])
def test_lane_crc_equals_reference_for_any_chunking(size: int) -> None:
    data = os.urandom(size)
    reference = crc64_simple(data)
    for step in (size or 1, 1000, 777777):
        crc = CRC64(lanes=1024, lane_len=256) if step == 1000 else CRC64()
        for start in range(0, len(data), step):
            crc.update(data[start:start + step])
        assert crc.value == reference


def _rdb(payload: bytes = b"\xfe\x00\x00\x01a\x01b") -> bytes:
    body = b"REDIS0010" + payload + b"\xff"
    return body + crc64_simple(body).to_bytes(8, "little")


def test_rdb_inspector_accepts_a_good_rdb_and_catches_a_flipped_byte() -> None:
    good = _rdb()
    inspector = RDBInspector("x", crc=True)
    for byte in good:
        inspector.write(bytes([byte]))
    assert inspector.check_crc() is None and inspector.version == 10
    bad = bytearray(good)
    bad[10] ^= 1
    inspector = RDBInspector("x", crc=True)
    inspector.write(bytes(bad))
    with pytest.raises(StreamError, match="CRC64 mismatch"):
        inspector.check_crc()


def test_rdb_inspector_rejects_no_header_and_truncation() -> None:
    with pytest.raises(StreamError, match="RDB header"):
        RDBInspector("x").write(b"NOTREDIS0010")
    inspector = RDBInspector("x")
    inspector.write(_rdb()[:-3])
    with pytest.raises(StreamError, match="end opcode"):
        inspector.check_end()


def test_rdb_inspector_reports_disabled_checksum() -> None:
    inspector = RDBInspector("x", crc=True)
    inspector.write(b"REDIS0010\xfe\x00\xff" + b"\x00" * 8)
    assert inspector.check_crc() == "disabled"


def _fake_connection(sock: socket.socket) -> RedisConnection:
    return RedisConnection(sock, "fake:6379", connect_timeout=5.0)


def _serve(server: socket.socket, replies: t.List[bytes]) -> None:
    for reply in replies:
        server.sendall(reply)
    server.shutdown(socket.SHUT_WR)  # end of stream for the client, which may still be sending
    while server.recv(65536):
        pass
    server.close()


def _fetch(replies: t.List[bytes], size: int = 7) -> bytes:
    client, server = socket.socketpair()
    thread = threading.Thread(target=_serve, args=(server, replies))
    thread.start()
    try:
        source = ReplicationSource(_fake_connection(client))
        out = b""
        while True:
            data = source.read(size)
            if not data:
                return out
            out += data
    finally:
        client.close()
        thread.join()


def test_diskless_transfer_strips_the_end_marker_even_when_split() -> None:
    rdb = _rdb(os.urandom(300))
    marker = b"m" * 40
    # The marker arrives split over two sends, after keep-alive newlines.
    stream = [b"+OK\r\n+OK\r\n", b"\n\n", b"$EOF:" + marker + b"\r\n", rdb + marker[:13], marker[13:]]
    assert _fetch(stream) == rdb
    assert _fetch(stream, size=1 << 20) == rdb


def test_length_prefixed_transfer_and_truncation() -> None:
    rdb = _rdb(os.urandom(100))
    assert _fetch([b"+OK\r\n+OK\r\n", b"$%d\r\n" % len(rdb) + rdb]) == rdb
    with pytest.raises(StreamError, match="closed the connection after"):
        _fetch([b"+OK\r\n+OK\r\n", b"$%d\r\n" % len(rdb) + rdb[:50]])
    with pytest.raises(StreamError, match="before the end marker"):
        _fetch([b"+OK\r\n+OK\r\n", b"$EOF:" + b"m" * 40 + b"\r\n" + rdb])


def test_missing_acl_rights_are_named() -> None:
    with pytest.raises(RunbookError, match=r"\+sync \+replconf"):
        _fetch([b"-NOPERM this user has no permissions to run the 'replconf' command\r\n"])


def test_parse_info_keyspace() -> None:
    info = parse_info("# Server\r\nredis_version:7.0.15\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5\r\n"
                      "db12:keys=9,expires=0,avg_ttl=0\r\n")
    assert info["redis_version"] == "7.0.15"
    assert info["keyspace"]["db12"] == {"keys": 9, "expires": 0, "avg_ttl": 0}


def test_config_edit_turns_only_appendonly_off(tmp_path: t.Any) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text("port 1\nappendonly yes # on\nappendfilename x.aof\n")
    original, edited = config_without_aof(str(conf))
    assert edited == b"port 1\nappendonly no # on\nappendfilename x.aof\n" and original == conf.read_bytes()
    conf.write_text("port 1\n")
    with pytest.raises(RunbookError, match="no 'appendonly yes' line"):
        config_without_aof(str(conf))


def test_every_argument_is_a_length_prefixed_bulk_string() -> None:
    """CR/LF in a value (a password) stays inside its bulk string: the server reads one command."""
    payload = "p\r\nFLUSHALL\r\n"
    encoded = RedisConnection.encode(["AUTH", "user", payload])
    assert encoded == b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$13\r\np\r\nFLUSHALL\r\n\r\n"
    assert RedisConnection.encode([b"\x00\r\n"]) == b"*1\r\n$3\r\n\x00\r\n\r\n"


def _options(**params: t.Any) -> RedisSnapshotOptions:
    return make_task("redis_snapshot", RedisSnapshotOptions.from_params, params).options


def test_valid_options_pass() -> None:
    _options()
    _options(login_host="::1", login_port=65535, connect_timeout=0.5, compression_level=22,
             compression_threads=0, login_password="any\r\nbytes\x00", spool_dir="/var/tmp",
             backup_id="20261124T031500.042Z-3fa91c", service_name="redis-server@main.service")
    _options(compression="gzip", compression_level=9)
    _options(compression="none", compression_level=0)


def test_defaults_come_from_the_argument_spec() -> None:
    opts = _options()
    assert opts.state == "backup" and opts.method == "replication" and opts.level == "rdb"
    assert opts.wait_timeout == 3600 and opts.flush is False
    assert opts.connection.address() == ("localhost", 6379) and opts.connection.connect_timeout == 10.0
    assert opts.connection.tls is False and opts.connection.validate_certs is True
    assert opts.set_name == "localhost-6379" and opts.job.compression == "zstd"
    assert opts.job.compression_settings == {"algorithm": "zstd", "level": None, "threads": 0}
    assert _options(state="restore").method == "keys"
    assert _options(state="restore", method="file", service_name="redis").method == "file"
    assert _options(set="sessions", max_age="6h").job.max_age == 6 * 3600.0


def test_the_password_is_not_in_the_options_repr() -> None:
    opts = _options(login_password="s3cret-pass", encryption_identity="AGE-SECRET-KEY-1XYZ")
    assert "s3cret-pass" not in repr(opts) and "AGE-SECRET-KEY" not in repr(opts)


@pytest.mark.parametrize("state, method, words", [("backup", "keys", "restore method"),
                                                  ("restore", "bgsave", "backup method")])
def test_a_method_of_the_other_state_is_refused(state: str, method: str, words: str) -> None:
    with pytest.raises(RunbookError, match=words):
        _options(state=state, method=method, service_name="redis")


@pytest.mark.parametrize("params, words", [
    (dict(state="restore", method="file"), "service_name, stop_command"),
    (dict(state="restore", method="file", stop_command=["true"]), "start_command"),
    (dict(service_name="redis", stop_command=["true"], start_command=["true"]), "mutually exclusive"),
    (dict(client_key_file="/tmp/key.pem"), "client_cert_file"),
    (dict(state="list"), "state"),
    (dict(level="deep"), "level"),
])
def test_the_argument_spec_refuses_what_it_can(params: t.Dict[str, t.Any], words: str) -> None:
    with pytest.raises(InvalidParams, match=words):
        validated("redis_snapshot", params)


@pytest.mark.parametrize("option, value, words", [
    ("login_port", 0, "login_port"), ("login_port", -1, "login_port"), ("login_port", 65536, "login_port"),
    ("connect_timeout", 0.0, "connect_timeout"), ("connect_timeout", -3.0, "connect_timeout"),
    ("connect_timeout", float("nan"), "connect_timeout"), ("connect_timeout", float("inf"), "connect_timeout"),
    ("wait_timeout", 0, "wait_timeout"), ("wait_timeout", -1, "wait_timeout"),
    ("compression_level", 0, "compression_level"), ("compression_level", -5, "compression_level"),
    ("compression_level", 23, "compression_level"), ("compression_threads", -1, "compression_threads"),
    ("compression_threads", 100000, "compression_threads"),
    ("login_host", "a\r\nb", "login_host"), ("login_host", "h\x00", "login_host"), ("login_host", "../x", "login_host"),
    ("login_host", "a b", "login_host"), ("login_host", "", "login_host"),
    ("login_user", "u\r\nFLUSHALL", "login_user"), ("spool_dir", "/tmp/\x00x", "spool_dir"),
    ("ca_certs", "ca\n.pem", "ca_certs"), ("set", "../other", "set"), ("backup_id", "../../x", "backup_id"),
    ("service_name", "--host=evil", "service_name"), ("service_name", "a b", "service_name"),
])
def test_bad_options_are_refused_with_their_name(option: str, value: t.Any, words: str) -> None:
    with pytest.raises(RunbookError, match=words):
        _options(**{option: value})


def test_a_default_set_from_a_hostile_host_is_refused() -> None:
    with pytest.raises(RunbookError, match="login_host"):
        _options(login_host=".hidden")
    with pytest.raises(RunbookError, match="NUL byte"):
        _options(stop_command=["kill", "a\x00b"], start_command=["true"])
    with pytest.raises(RunbookError, match="stop_command is an empty list"):
        _options(stop_command=[], start_command=["true"])


def test_the_password_never_appears_in_a_refusal() -> None:
    # The argument spec turns a number into text; the check still holds for whatever reaches it.
    with pytest.raises(RunbookError) as caught:
        RedisConnectionOptions.from_params(dict(validated("redis_snapshot"), login_password=12345))
    assert "12345" not in caught.value.msg


def test_a_full_file_is_the_directory_s_fault(tmp_path: t.Any) -> None:
    """LocalFile remembers the write error (as a GuardedWriter) and names the directory, with the room needed."""
    target = LocalFile(str(tmp_path / "dump.rdb"), "/srv/spool", "spool directory", needed=1 << 20)
    target.destination = open("/dev/full", "wb")  # pylint: disable=consider-using-with
    with pytest.raises(OSError):
        target.write(b"x" * 65536)
        target.flush()
    problem = target.directory_failure()
    target.abort()
    assert "the spool directory '/srv/spool' is full" in problem.msg and "needs 1048576 bytes" in problem.msg


def _stored_snapshot(tmp_path: t.Any, rdb: bytes) -> t.Dict[str, t.Any]:
    """A snapshot written the way a backup writes it (manifest last), without a server."""
    url = "file://%s" % (tmp_path / "repo")
    with Repository.from_options({"repository": url}).new_backup("redis", "unit") as writer:
        writer.add_object("dump.rdb", io.BytesIO(rdb), compression="zstd")
        writer.commit(fmt="rdb", extra={"redis": {"keys": {"db0": 1}}})
    return {"repository": url, "set": "unit", "state": "verify"}


def test_verify_returns_a_list_of_entries_and_fails_keeping_it(tmp_path: t.Any) -> None:
    args = _stored_snapshot(tmp_path, _rdb())
    result = run_redis_snapshot(make_task("redis_snapshot", RedisSnapshotOptions.from_params, dict(args, level="rdb")))
    (entry,) = result["verified"]
    assert entry["ok"] and entry["level"] == "rdb" and entry["kind"] == "redis" and entry["set"] == "unit"
    assert entry["backup_id"] == result["backup_id"] and entry["problems"] == []
    assert "python" in entry["details"]["crc_checked_by"] and entry["details"]["rdb_version"] == 10
    assert result["msg"].startswith("backup %s verified" % result["backup_id"])

    bad = bytearray(_rdb())
    bad[10] ^= 1
    args = _stored_snapshot(tmp_path / "bad", bytes(bad))
    with pytest.raises(RunbookError) as caught:
        run_redis_snapshot(make_task("redis_snapshot", RedisSnapshotOptions.from_params, dict(args, level="rdb")))
    assert "failed verification at level rdb" in caught.value.msg and "CRC64 mismatch" in caught.value.msg
    (entry,) = caught.value.details["verified"]
    assert not entry["ok"] and any("CRC64 mismatch" in problem for problem in entry["problems"])
    assert caught.value.details["changed"] is False and caught.value.details["backup_id"] == entry["backup_id"]


@pytest.mark.parametrize("code, state", [(errno.ENOSPC, "is full"), (errno.EROFS, "is read-only"),
                                         (errno.EACCES, "is not writable"), (errno.EIO, "could not be used")])
def test_directory_problems_name_the_directory_and_the_cause(code: int, state: str) -> None:
    problem = directory_problem("spool directory", "/srv/spool", OSError(code, os.strerror(code)), "writing x")
    assert "/srv/spool" in problem.msg and state in problem.msg and os.strerror(code) in problem.msg
