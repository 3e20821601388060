"""Pure logic of the Redis helpers: CRC64, the replication reply framing, RDB checks, INFO parsing."""

from __future__ import annotations

import errno
import os
import socket
import threading
import typing as t

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._redis import (
    CRC64, RDBInspector, RedisConnection, ReplicationSource, _config_without_aof, crc64_simple, directory_problem,
    parse_info, redis_snapshot_argspec, validate_params)
from ansible_collections.runbook.ops.plugins.module_utils._stream import StreamError


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
    conn = RedisConnection.__new__(RedisConnection)
    conn.sock = sock
    conn._buf = bytearray()
    conn._pos = 0
    conn.where = "fake:6379"
    conn.user = None
    conn.connect_timeout = 5.0
    return conn


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
    original, edited = _config_without_aof(str(conf))
    assert edited == b"port 1\nappendonly no # on\nappendfilename x.aof\n" and original == conf.read_bytes()
    conf.write_text("port 1\n")
    with pytest.raises(RunbookError, match="no 'appendonly yes' line"):
        _config_without_aof(str(conf))


def test_every_argument_is_a_length_prefixed_bulk_string() -> None:
    """CR/LF in a value (a password) stays inside its bulk string: the server reads one command."""
    payload = "p\r\nFLUSHALL\r\n"
    encoded = RedisConnection.encode(["AUTH", "user", payload])
    assert encoded == b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$13\r\np\r\nFLUSHALL\r\n\r\n"
    assert RedisConnection.encode([b"\x00\r\n"]) == b"*1\r\n$3\r\n\x00\r\n\r\n"


def _params(**changes: t.Any) -> dict:
    params = {name: spec.get("default") for name, spec in redis_snapshot_argspec().items()}
    params.update(compression="zstd", compression_level=None, compression_threads=0, set=None)
    params.update(changes)
    return params


def test_valid_options_pass() -> None:
    validate_params(_params())
    validate_params(_params(login_host="::1", login_port=65535, connect_timeout=0.5, compression_level=22,
                            compression_threads=0, login_password="any\r\nbytes\x00", spool_dir="/var/tmp",
                            backup_id="20261124T031500.042Z-3fa91c", service_name="redis-server@main.service"))
    validate_params(_params(compression="gzip", compression_level=9))
    validate_params(_params(compression="none", compression_level=0))


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
        validate_params(_params(**{option: value}))


def test_a_default_set_from_a_hostile_host_is_refused() -> None:
    with pytest.raises(RunbookError, match="login_host"):
        validate_params(_params(login_host=".hidden"))
    with pytest.raises(RunbookError, match="NUL byte"):
        validate_params(_params(stop_command=["kill", "a\x00b"], start_command=["true"]))


def test_the_password_never_appears_in_a_refusal() -> None:
    with pytest.raises(RunbookError) as caught:
        validate_params(_params(login_password=12345))
    assert "12345" not in caught.value.msg


@pytest.mark.parametrize("code, state", [(errno.ENOSPC, "is full"), (errno.EROFS, "is read-only"),
                                         (errno.EACCES, "is not writable"), (errno.EIO, "could not be used")])
def test_directory_problems_name_the_directory_and_the_cause(code: int, state: str) -> None:
    problem = directory_problem("spool directory", "/srv/spool", OSError(code, os.strerror(code)), "writing x")
    assert "/srv/spool" in problem.msg and state in problem.msg and os.strerror(code) in problem.msg
