"""Hostile input against ``redis_snapshot``: traversal in ``set``, ``backup_id`` and a ``login_host`` that
becomes the default set, control bytes in connection values, RESP injection through the password,
numbers that are not positive, a spool that is read-only, a file or missing, identity and TLS files that
are binary or directories, and unit names that look like options.

Every case ends in a clean failure that names the option (or the place) at fault, leaks no secret, and
writes nothing outside the repository; nothing reaches the Redis server's data.
"""

from __future__ import annotations

import json
import os
import subprocess
import typing as t
from pathlib import Path

import pytest

from tests.harness.collection import run_module
from tests.harness.hostile import CONTROL, TOO_LONG, TRAVERSAL, assert_clean_failure, tree_snapshot
from tests.harness.services import RedisServer

HOSTILE_NAMES = TRAVERSAL + CONTROL + TOO_LONG


@pytest.fixture(scope="module")
def stored_root(redis_plain: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository (``repo``) holding one backup of set ``app``, a planted file beside it (``outside``),
    and two keys in the server; made once, as every case here is refused before it writes."""
    root = tmp_path_factory.mktemp("hostile-redis")
    client = redis_plain.client()
    client.flushall()
    client.set("sentinel", "kept")
    client.set("other", "kept too")
    result = run_module("redis_snapshot", dict(redis_plain.login, repository="file://%s" % (root / "repo"), set="app"))
    assert not result.get("failed"), result
    (root / "outside").mkdir()
    (root / "outside" / "planted").write_text("not ours")
    return root


@pytest.fixture
def stored(stored_root: Path) -> dict:
    return {"repository": "file://%s" % (stored_root / "repo"), "set": "app"}


@pytest.fixture
def world(stored_root: Path, tmp_path: Path) -> t.Callable[[], tuple]:
    """Everything the module could write to: the repository, the files beside it and the test's own directory."""
    return lambda: (tree_snapshot(stored_root), tree_snapshot(tmp_path))


def _args(*parts: t.Mapping[str, t.Any], **options: t.Any) -> dict:
    """Module arguments from several mappings, later ones winning."""
    merged: dict = {}
    for part in parts + (options,):
        merged.update(part)
    return merged


def _untouched(server: RedisServer) -> None:
    client = server.client()
    assert client.get("sentinel") == b"kept" and client.dbsize() == 2, "the server's data changed"


# --------------------------------------------------------------------------- names that become paths

@pytest.mark.parametrize("bad_set", HOSTILE_NAMES + [".hidden", "../redis"])
@pytest.mark.parametrize("state", ["backup", "verify", "restore"])
def test_set_never_leaves_the_repository(redis_plain, stored, world, bad_set, state):
    before = world()
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, state=state, set=bad_set, level="load"))
    assert_clean_failure(result, secrets=[redis_plain.password], mentions=["set"])
    assert world() == before
    _untouched(redis_plain)


@pytest.mark.parametrize("bad_id", HOSTILE_NAMES + ["../../../outside/planted", "-rf", "id with space"])
@pytest.mark.parametrize("state", ["verify", "restore"])
def test_backup_id_never_leaves_the_repository(redis_plain, stored, world, bad_id, state):
    before = world()
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, state=state, backup_id=bad_id))
    assert_clean_failure(result, secrets=[redis_plain.password], mentions=["backup_id"])
    assert world() == before
    _untouched(redis_plain)


@pytest.mark.parametrize("host", HOSTILE_NAMES + ["a b", "host\r\nFLUSHALL"])
def test_a_login_host_that_is_no_host_is_refused_before_it_names_a_set(redis_plain, stored, world, host):
    """The default set is ``<login_host>-<login_port>``: a host holding ``../`` must not become a path."""
    before = world()
    args = _args(stored, login_host=host, login_port=redis_plain.port, login_password=redis_plain.password)
    args.pop("set")
    result = run_module("redis_snapshot", args)
    assert_clean_failure(result, secrets=[redis_plain.password], mentions=["login_host"])
    assert world() == before


@pytest.mark.parametrize("user", CONTROL + ["u\r\nFLUSHALL\r\n"])
def test_control_bytes_in_login_user_are_refused(redis_plain, stored, user):
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, login_user=user))
    assert_clean_failure(result, secrets=[redis_plain.password], mentions=["login_user"])
    _untouched(redis_plain)


# --------------------------------------------------------------------------- RESP injection

INJECTED = "inj3cted-secret\r\nFLUSHALL\r\n"


@pytest.fixture
def injection_server(service_factory) -> RedisServer:
    server = service_factory.add(RedisServer(service_factory.workdir("redis-inject"), name="redis-inject"))
    client = server.client()
    client.set("sentinel", "kept")
    client.set("other", "kept too")
    # The user's password holds CR/LF and a command; ACL SETUSER takes it as one binary-safe argument.
    client.acl_setuser("crlf", enabled=True, passwords=["+" + INJECTED, "+nul\x00secret"], keys=["*"],
                       channels=["*"], commands=["+@all"])
    return server


@pytest.mark.parametrize("password", [INJECTED, "nul\x00secret"])
def test_a_password_with_crlf_is_one_argument_and_the_data_survives(injection_server, tmp_path, password):
    args = dict(login_host=injection_server.host, login_port=injection_server.port, login_user="crlf",
                login_password=password, repository="file://%s" % (tmp_path / "repo"), set="inject")
    result = run_module("redis_snapshot", args)
    # Authenticated with exactly these bytes (so they arrived as one bulk string) and nothing was flushed.
    assert not result.get("failed"), result
    assert result["manifest"]["redis"]["keys"] == {"db0": 2}
    assert "inj3cted-secret" not in json.dumps(result) + result.stderr
    _untouched(injection_server)


def test_a_wrong_password_with_an_injected_command_only_fails_authentication(injection_server, tmp_path):
    args = dict(login_host=injection_server.host, login_port=injection_server.port,
                login_password="wrong-secret\r\nFLUSHALL\r\n", repository="file://%s" % (tmp_path / "repo"))
    result = run_module("redis_snapshot", args)
    assert_clean_failure(result, secrets=["wrong-secret"], mentions=["authentication"])
    _untouched(injection_server)


# --------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("option, value", [
    ("login_port", 0), ("login_port", -1), ("login_port", 65536), ("login_port", 10 ** 12),
    ("connect_timeout", 0), ("connect_timeout", -1), ("connect_timeout", "nan"), ("connect_timeout", "inf"),
    ("wait_timeout", 0), ("wait_timeout", -5), ("wait_timeout", 10 ** 12),
    ("compression_level", 0), ("compression_level", -1), ("compression_level", 23),
    ("compression_threads", -1), ("compression_threads", 10 ** 9),
])
@pytest.mark.parametrize("state", ["backup", "verify"])
def test_numbers_out_of_range_are_refused(redis_plain, stored, world, option, value, state):
    before = world()
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, state=state, **{option: value}))
    assert_clean_failure(result, secrets=[redis_plain.password], mentions=[option])
    assert world() == before


def test_a_gzip_level_above_nine_is_refused(redis_plain, stored):
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, compression="gzip", compression_level=10))
    assert_clean_failure(result, mentions=["compression_level", "gzip"])


# --------------------------------------------------------------------------- the spool

@pytest.fixture
def read_only_dir(tmp_path) -> t.Iterator[Path]:
    path = tmp_path / "read-only"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _spool_cases(tmp_path: Path, read_only: Path) -> t.Dict[str, t.Tuple[str, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return {"read-only": (str(read_only), "read-only"), "file": (str(a_file), "not a directory"),
            "missing": (str(tmp_path / "missing"), "does not exist")}


@pytest.mark.parametrize("case", ["read-only", "file", "missing"])
@pytest.mark.parametrize("state", ["verify", "restore"])
def test_a_spool_that_cannot_take_the_rdb_is_named(redis_plain, stored, world, tmp_path, read_only_dir, case,
                                                   state):
    spool, words = _spool_cases(tmp_path, read_only_dir)[case]
    before = world()
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, state=state, level="load", spool_dir=spool))
    msg = assert_clean_failure(result, secrets=[redis_plain.password], mentions=["spool", words])
    assert spool in msg, msg
    assert "failed verification" not in msg and "corrupt" not in msg, msg
    assert world() == before
    assert not os.path.exists(os.path.join(spool, "dump.rdb"))
    _untouched(redis_plain)


@pytest.mark.parametrize("spool", CONTROL)
def test_control_bytes_in_spool_dir_are_refused(redis_plain, stored, spool):
    result = run_module("redis_snapshot", _args(stored, state="verify", level="load", spool_dir="/tmp/" + spool))
    assert_clean_failure(result, mentions=["spool_dir"])


# --------------------------------------------------------------------------- files given by path

@pytest.mark.parametrize("kind", ["binary", "directory", "device"])
def test_an_identity_that_is_no_identity_file_is_refused(redis_plain, stored, tmp_path, kind):
    path = tmp_path / "identity"
    if kind == "binary":
        path.write_bytes(b"\xff\xfe\x00" + os.urandom(4096))
        shown = str(path)
    elif kind == "directory":
        path.mkdir()
        shown = str(path)
    else:
        shown = "/dev/zero"
    result = run_module("redis_snapshot", _args(stored, state="verify", level="rdb", encryption_identity=shown))
    msg = assert_clean_failure(result, mentions=["encryption_identity"])
    assert "\\xff\\xfe" not in json.dumps(result), "identity file content in the output"
    assert len(msg) < 1000


@pytest.fixture
def tls_bad_files(tmp_path) -> t.Dict[str, str]:
    binary = tmp_path / "binary.pem"
    binary.write_bytes(os.urandom(2048))
    return {"binary": str(binary), "directory": str(tmp_path), "missing": str(tmp_path / "missing.pem")}


@pytest.mark.parametrize("option", ["ca_certs", "client_cert_file"])
@pytest.mark.parametrize("kind", ["binary", "directory", "missing"])
def test_tls_files_that_are_no_pem_files_are_named(redis_tls, tmp_path, tls_bad_files, option, kind):
    args = dict(redis_tls.tls_login, repository="file://%s" % (tmp_path / "repo"))
    args[option] = tls_bad_files[kind]
    result = run_module("redis_snapshot", args)
    assert_clean_failure(result, secrets=[redis_tls.password], mentions=[option])


def test_a_client_key_without_a_certificate_is_refused(redis_tls, tmp_path, tls_bad_files):
    args = dict(redis_tls.tls_login, repository="file://%s" % (tmp_path / "repo"), client_key_file=tls_bad_files["binary"])
    assert_clean_failure(run_module("redis_snapshot", args), secrets=[redis_tls.password], mentions=["client_key_file"])


@pytest.mark.parametrize("value", CONTROL)
def test_control_bytes_in_tls_file_options_are_refused(redis_tls, tmp_path, value):
    args = dict(redis_tls.tls_login, repository="file://%s" % (tmp_path / "repo"), ca_certs="/tmp/" + value)
    assert_clean_failure(run_module("redis_snapshot", args), secrets=[redis_tls.password], mentions=["ca_certs"])


# --------------------------------------------------------------------------- restore method=file

@pytest.mark.parametrize("name", ["-H evil", "--host=evil", "a b", "../x"] + CONTROL)
def test_service_names_that_are_options_or_paths_are_refused(redis_plain, stored, name):
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, state="restore", method="file",
                                                service_name=name))
    assert_clean_failure(result, secrets=[redis_plain.password], mentions=["service_name"])
    _untouched(redis_plain)


def test_a_nul_byte_in_a_stop_command_is_refused(redis_plain, stored):
    result = run_module("redis_snapshot", _args(redis_plain.login, stored, state="restore", method="file",
                                                stop_command=["kill", "1\x002"], start_command=["true"]))
    assert_clean_failure(result, secrets=[redis_plain.password], mentions=["stop_command"])
    _untouched(redis_plain)
