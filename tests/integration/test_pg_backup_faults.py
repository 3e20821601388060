"""pg_backup under real faults: the server killed mid-dump, S3 killed mid-upload, a flipped byte,
a wrong identity, a swap with live sessions, no password in any argv or -vvvv output, and none
left on disk when the module is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from tests.harness.collection import ansible_env, run_module, run_playbook
from tests.harness.process import ServiceError
from tests.harness.services import MotoS3Server, PostgresServer
from tests.integration.test_pg_backup_support import create_source, databases, fingerprint

BIG_SQL = """
CREATE TABLE blobs (id bigserial PRIMARY KEY, a text, b text, c text);
INSERT INTO blobs (a, b, c)
SELECT md5(random()::text) || md5(random()::text), md5(random()::text) || md5(random()::text),
       md5(random()::text) || md5(random()::text)
  FROM generate_series(1, ROWS);
"""


@pytest.fixture(scope="module")
def age_keys() -> dict:
    import pyrage
    identity = pyrage.x25519.Identity.generate()
    other = pyrage.x25519.Identity.generate()
    return {"identity": str(identity), "recipient": str(identity.to_public()), "other_identity": str(other)}


def _args(pg: t.Any, repository: dict, db: str, **extra: t.Any) -> dict:
    args = dict(pg.login)
    args.update(repository)
    args["db"] = db
    args.update(extra)
    return args


class Background:
    """Run the module in a thread; ``result`` once joined."""

    def __init__(self, args: dict) -> None:
        self.result: t.Optional[dict] = None
        self.thread = threading.Thread(target=self._run, args=(args,), daemon=True)
        self.thread.start()

    def _run(self, args: dict) -> None:
        self.result = run_module("pg_backup", args, timeout=300)

    def join(self, timeout: float = 300) -> dict:
        self.thread.join(timeout)
        assert self.result is not None, "the module did not finish in %ss" % timeout
        return self.result


def _wait(predicate: t.Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s" % what)


def _processes() -> t.Iterator[t.Tuple[int, bytes]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    yield int(entry), handle.read()
            except OSError:
                continue


def _pg_dump_running() -> bool:
    return any(b"pg_dump" in cmd.split(b"\0")[0] and b"--snapshot" in cmd for _pid, cmd in _processes())


def test_server_killed_mid_dump(service_factory, tmp_path):
    pg = service_factory.add(PostgresServer(service_factory.workdir("pg")))
    pg.psql("CREATE DATABASE big")
    pg.psql(BIG_SQL.replace("ROWS", "1500000"), db="big")
    repo_dir = tmp_path / "repo"
    repository = {"repository": "file://%s" % repo_dir}
    first = run_module("pg_backup", _args(pg, repository, "big", compression_level=1))
    assert not first.get("failed"), first

    job = Background(_args(pg, repository, "big", compression_level=1, retention={"keep_last": 1}))
    _wait(lambda: any(".partial-" in p.name for p in repo_dir.rglob("*")), what="the object upload to start")
    pg.kill()
    result = job.join()
    assert result.get("failed"), result
    assert "pg_dump" in result["msg"] or "row count" in result["msg"], result["msg"]
    manifests = list(repo_dir.rglob("manifest.json"))
    assert [m.parent.name for m in manifests] == [first["backup_id"]]  # nothing committed, nothing pruned
    assert not [p for p in repo_dir.rglob("*") if p.is_file() and p.parent.name != first["backup_id"]]

    # Backends of the killed postmaster may hold its shared memory for a moment: retry the start.
    for attempt in range(20):
        try:
            pg.start()
            break
        except ServiceError:
            if attempt == 19:
                raise
            time.sleep(1)
    verified = run_module("pg_backup", _args(pg, repository, "big", state="verify", level="archive"))
    assert not verified.get("failed"), verified
    assert verified["backup_id"] == first["backup_id"]


def test_s3_killed_mid_upload(service_factory, postgres):
    s3 = service_factory.add(MotoS3Server(service_factory.workdir("s3")))
    bucket = s3.create_bucket("faults")
    db = "s3fault_%s" % uuid.uuid4().hex[:6]
    postgres.psql('CREATE DATABASE "%s"' % db)
    postgres.psql(BIG_SQL.replace("ROWS", "700000"), db=db)
    client = s3.client()
    job = Background(_args(postgres, s3.repository_options(bucket), db, compression="none"))
    _wait(lambda: bool(client.list_multipart_uploads(Bucket=bucket).get("Uploads")), what="a multipart upload")
    s3.kill()
    result = job.join()
    assert result.get("failed"), result
    assert "store" in result["msg"] and "manifest" not in result["msg"]
    # The server came back empty (moto keeps no state): what matters is that the module failed
    # cleanly, naming the stage, with no pg_dump left behind.
    _wait(lambda: not _pg_dump_running(), timeout=10, what="pg_dump to be gone")
    postgres.psql('DROP DATABASE "%s"' % db)


@pytest.fixture()
def stored_backup(postgres, tmp_path, age_keys) -> dict:
    db = "fault_%s" % uuid.uuid4().hex[:6]
    create_source(postgres, db, rows=3000)
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    result = run_module("pg_backup", _args(postgres, repository, db, encryption_recipients=[age_keys["recipient"]]))
    assert not result.get("failed"), result
    target = db + "_live"
    postgres.psql('CREATE DATABASE "%s"' % target)
    postgres.psql("CREATE TABLE precious (n int); INSERT INTO precious VALUES (42)", db=target)
    return {"db": db, "repository": repository, "target": target, "manifest": result["manifest"],
            "object": tmp_path / "repo" / "postgresql" / db / result["backup_id"] / "database.dump"}


def test_flipped_byte_fails_verify_and_restore(postgres, stored_backup, age_keys):
    path = stored_backup["object"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    ident = {"encryption_identity": age_keys["identity"]}
    for level in ("checksum", "archive", "restore"):
        result = run_module("pg_backup", _args(postgres, stored_backup["repository"], stored_backup["db"],
                                               state="verify", level=level, **ident))
        assert result.get("failed"), result
        assert [v["ok"] for v in result["verified"]] == [False]
        assert "sha256" in result["verified"][0]["problems"][0]
        assert "database.dump" in result["msg"] and "sha256" in result["msg"], result["msg"]
    before = fingerprint(postgres, stored_backup["target"])
    dbs = databases(postgres)
    for mode in ("swap", "clean"):
        result = run_module("pg_backup", _args(postgres, stored_backup["repository"], stored_backup["db"],
                                               state="restore", mode=mode, target_db=stored_backup["target"], **ident))
        assert result.get("failed"), result
        assert "database.dump" in result["msg"] and "not touched" in result["msg"], result["msg"]
    assert fingerprint(postgres, stored_backup["target"]) == before
    assert databases(postgres) == dbs


def test_wrong_identity_fails_before_touching_target(postgres, stored_backup, age_keys):
    before = fingerprint(postgres, stored_backup["target"])
    dbs = databases(postgres)
    for mode in ("swap", "clean"):
        result = run_module("pg_backup", _args(postgres, stored_backup["repository"], stored_backup["db"],
                                               state="restore", mode=mode, target_db=stored_backup["target"],
                                               encryption_identity=age_keys["other_identity"]))
        assert result.get("failed"), result
        assert "does not match" in result["msg"], result["msg"]
        assert age_keys["other_identity"] not in json.dumps(result)
    missing = run_module("pg_backup", _args(postgres, stored_backup["repository"], stored_backup["db"],
                                            state="restore", mode="clean", target_db=stored_backup["target"]))
    assert missing.get("failed") and "encryption_identity is required" in missing["msg"]
    assert fingerprint(postgres, stored_backup["target"]) == before
    assert databases(postgres) == dbs


def test_swap_with_live_sessions(postgres, stored_backup, age_keys):
    import psycopg
    target = stored_backup["target"]
    args = _args(postgres, stored_backup["repository"], stored_backup["db"], state="restore", target_db=target,
                 encryption_identity=age_keys["identity"])
    session = psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.user, password=postgres.password,
                              dbname=target, application_name="payments-api", autocommit=True)
    try:
        pid = session.info.backend_pid
        dbs = databases(postgres)
        refused = run_module("pg_backup", args)
        assert refused.get("failed"), refused
        assert "pid %d" % pid in refused["msg"] and "payments-api" in refused["msg"], refused["msg"]
        assert "terminate_connections" in refused["msg"]
        assert databases(postgres) == dbs
        assert postgres.psql("SELECT n FROM precious", db=target) == "42"

        swapped = run_module("pg_backup", dict(args, terminate_connections=True))
        assert not swapped.get("failed"), swapped
        assert swapped["previous_db"].startswith(target + "_pre_")
        assert postgres.psql("SELECT n FROM precious", db=swapped["previous_db"]) == "42"
        assert fingerprint(postgres, target) == fingerprint(postgres, stored_backup["db"])
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()


def test_no_password_in_argv_or_verbose_output(service_factory, tmp_path):
    password = "pw-%s-secret" % uuid.uuid4().hex
    pg = service_factory.add(PostgresServer(service_factory.workdir("pg"), password=password))
    pg.psql("CREATE DATABASE argv")
    pg.psql(BIG_SQL.replace("ROWS", "400000"), db="argv")
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    seen_pg_dump = []
    leaks = []
    stop = threading.Event()

    def watch() -> None:
        needle = password.encode()
        while not stop.is_set():
            for pid, cmd in _processes():
                if needle in cmd:
                    leaks.append((pid, cmd))
                if b"pg_dump" in cmd.split(b"\0")[0] or b"pg_restore" in cmd.split(b"\0")[0]:
                    seen_pg_dump.append(pid)
                    try:
                        with open("/proc/%d/environ" % pid, "rb") as handle:
                            if needle in handle.read():
                                leaks.append((pid, b"environ"))
                    except OSError:
                        pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_module("pg_backup", _args(pg, repository, "argv"))
        assert not result.get("failed"), result
        verified = run_module("pg_backup", _args(pg, repository, "argv", state="verify", level="restore"))
        assert not verified.get("failed"), verified
    finally:
        stop.set()
        watcher.join(5)
    assert seen_pg_dump, "the watcher never saw pg_dump/pg_restore running"
    assert not leaks
    assert password not in json.dumps(result)

    playbook = tmp_path / "play.yml"
    playbook.write_text("""
- hosts: localhost
  gather_facts: false
  vars_files:
    - secrets.json
  module_defaults:
    runbook.ops.pg_backup:
      login_host: "{{ pg.login_host }}"
      login_port: "{{ pg.login_port }}"
      login_user: "{{ pg.login_user }}"
      login_password: "{{ pg.login_password }}"
      repository: "{{ repo }}"
      db: argv
  tasks:
    - name: Back up
      runbook.ops.pg_backup:
        compression: none
    - name: Restore into a new database
      runbook.ops.pg_backup:
        state: restore
        mode: new
        target_db: argv_copy
    - name: Fail on a bad database, with the password in the options
      runbook.ops.pg_backup:
        db: no_such_database
      ignore_errors: true
""")
    # The secret comes from a vars file, as from a vault: -e values are echoed by ansible-playbook itself.
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"pg": pg.login, "repo": repository["repository"]}))
    proc = run_playbook(playbook, verbosity=4)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "argv_copy" in proc.stdout and "no_such_database" in proc.stdout
    assert password not in proc.stdout
    assert Path(tmp_path / "repo").exists()


def _children(parent: int) -> t.List[t.Tuple[int, bytes]]:
    found = []
    for pid, cmd in _processes():
        try:
            with open("/proc/%d/stat" % pid, "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            found.append((pid, cmd))
    return found


def _files_holding(root: Path, needle: bytes) -> t.List[str]:
    hits = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as handle:
                    if needle in handle.read():
                        hits.append(path)
            except OSError:
                continue
    return hits


def test_sigkill_leaves_no_password_behind(postgres, tmp_path):
    """SIGKILL the module while pg_dump runs (held on a table lock): no file under the module's
    temporary directory holds the password, and pg_dump never had it in argv or environment."""
    import psycopg
    db = "killed_%s" % uuid.uuid4().hex[:6]
    postgres.psql('CREATE DATABASE "%s"' % db)
    postgres.psql("CREATE TABLE held (n int); INSERT INTO held VALUES (1)", db=db)
    holder = psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.user, password=postgres.password,
                             dbname=db)
    holder.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
    module_tmp = tmp_path / "tmp"
    module_tmp.mkdir()
    args_file = tmp_path / "args.json"  # holds the password itself: kept outside the scanned directory
    payload = _args(postgres, {"repository": "file://%s" % (tmp_path / "repo")}, db, compression="none")
    payload.update(_ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir=str(module_tmp))
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "ansible_collections.runbook.ops.plugins.modules.pg_backup", str(args_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=ansible_env({"TMPDIR": str(module_tmp)}))
    needle = postgres.password.encode()
    try:
        dumps: t.List[t.Tuple[int, bytes]] = []

        def dumping() -> bool:
            dumps[:] = [c for c in _children(proc.pid) if os.path.basename(c[1].split(b"\0")[0]) == b"pg_dump"]
            return bool(dumps) and postgres.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND query LIKE 'LOCK TABLE %%' "
                "AND wait_event_type = 'Lock'" % db) != "0"

        _wait(dumping, timeout=60, what="pg_dump to wait on the table lock")
        pid, cmdline = dumps[0]
        assert needle not in cmdline
        with open("/proc/%d/environ" % pid, "rb") as handle:
            environ = handle.read()
        assert needle not in environ
        passfile = [v for v in environ.split(b"\0") if v.startswith(b"PGPASSFILE=")]
        assert passfile, "pg_dump got no password file"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        holder.close()
    assert _files_holding(module_tmp, needle) == []
    assert _files_holding(Path("/dev/shm"), needle) == []
    location = passfile[0].split(b"=", 1)[1].decode()
    assert not os.path.exists(location), "the password file %s outlived the module" % location
    postgres.psql('DROP DATABASE "%s" WITH (FORCE)' % db)
