"""Hostile input against the backup repository, ``backup_repo`` and ``backup_repo_info``: traversal in ``set`` and
``backup_id``, planted manifests, missing repositories, killed uploads, full disks, identity files.

Every case ends in a clean failure (or a clearly reported finding) and nothing outside the
repository is read, written or deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing as t
from pathlib import Path

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import StreamError
from tests.harness.collection import REPO, ansible_env, run_module
from tests.harness.hostile import CONTROL, TOO_LONG, TRAVERSAL, assert_clean_failure, tree_snapshot


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        size = len(self.data) if size < 0 else size
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


def _backup(repo: Repository, set_name: str = "app", kind: str = "postgresql", data: bytes = b"payload " * 500,
            recipients=()) -> dict:
    with repo.new_backup(kind, set_name) as backup:
        backup.add_object("data", _Reader(data), recipients=list(recipients))
        return backup.commit(fmt="raw", compression={"algorithm": "zstd"})


def _run(state: str, args: dict) -> dict:
    """``backup_repo`` for verify, prune and cleanup; ``backup_repo_info`` for listing."""
    if state == "list":
        return run_module("backup_repo_info", args)
    return run_module("backup_repo", dict(args, state=state))


def _plant(outside: Path, backup_id: str = "planted") -> Path:
    """A manifest and a dump outside the repository, as an attacker with write access there would leave them."""
    target = outside / backup_id
    target.mkdir(parents=True)
    (target / "data").write_bytes(b"planted data")
    (target / "manifest.json").write_text(json.dumps({
        "id": backup_id, "kind": "postgresql", "set": "app", "created": "2026-01-01T00:00:00Z",
        "objects": [{"name": "data", "size": 12, "sha256": "", "compression": "none", "encrypted": False}]}))
    return target


@pytest.fixture
def file_repo(tmp_path: Path) -> dict:
    root = tmp_path / "repo"
    _backup(Repository.from_options({"repository": "file://%s" % root}))
    return {"repository": "file://%s" % root}


# --------------------------------------------------------------------------- defect 2: backup_id

@pytest.mark.parametrize("bad_id", TRAVERSAL + CONTROL + TOO_LONG + ["../../../outside/planted", "..%2f..", "-rf"])
@pytest.mark.parametrize("state", ["verify", "list"])
def test_backup_id_never_leaves_the_repository(file_repo, tmp_path, bad_id, state):
    _plant(tmp_path / "outside")
    before = tree_snapshot(tmp_path / "outside")
    result = _run(state, dict(file_repo, kind="postgresql", set="app", backup_id=bad_id))
    msg = assert_clean_failure(result)
    assert msg.startswith("backup_id "), msg  # refused by validation, not "not found" after a lookup
    assert "planted" not in json.dumps(result.get("verified", []))
    assert tree_snapshot(tmp_path / "outside") == before


def test_repository_api_refuses_a_traversing_backup_id(file_repo, tmp_path):
    _plant(tmp_path / "outside")
    repo = Repository.from_options(file_repo)
    with pytest.raises(RunbookError, match="backup_id"):
        repo.get("postgresql", "app", "../../../outside/planted")


def test_a_manifest_that_does_not_match_its_place_is_not_trusted(file_repo, tmp_path):
    """A manifest copied into the repository cannot steer which objects are read or deleted."""
    root = Path(file_repo["repository"][len("file://"):])
    (tmp_path / "secret.txt").write_text("outside the repository")
    planted_dir = root / "postgresql" / "app" / "20260101T000000.000Z-abcdef"
    planted_dir.mkdir(parents=True)
    (planted_dir / "manifest.json").write_text(json.dumps({
        "id": "20260101T000000.000Z-abcdef", "kind": "postgresql", "set": "app", "created": "2026-01-01T00:00:00Z",
        "objects": [{"name": "../../../../secret.txt", "size": 22, "sha256": ""}]}))
    other_dir = root / "postgresql" / "app" / "20260101T000001.000Z-abcdef"
    other_dir.mkdir(parents=True)
    (other_dir / "manifest.json").write_text(json.dumps({"id": "x", "kind": "redis", "set": "../../..", "objects": []}))
    listed = run_module("backup_repo_info", dict(file_repo, kind="postgresql", set="app"))
    assert not listed.get("failed"), listed
    assert len(listed["backups"]) == 1
    reasons = {item["backup_id"]: item["reason"] for item in listed["incomplete"]}
    assert "not trusted" in reasons["20260101T000000.000Z-abcdef"]
    assert "not trusted" in reasons["20260101T000001.000Z-abcdef"]
    verified = run_module("backup_repo", dict(file_repo, state="verify", kind="postgresql", set="app",
                                              backup_id="20260101T000000.000Z-abcdef"))
    assert_clean_failure(verified, mentions=["not trusted"])
    cleaned = run_module("backup_repo", dict(file_repo, state="cleanup", older_than="0s"))
    assert not cleaned.get("failed"), cleaned
    # Reported, never deleted: it may be a real backup an operator moved by hand.
    assert (planted_dir / "manifest.json").exists() and (other_dir / "manifest.json").exists()
    assert (tmp_path / "secret.txt").read_text() == "outside the repository"


# --------------------------------------------------------------------------- defect 3: set

@pytest.mark.parametrize("bad_set", TRAVERSAL + CONTROL + TOO_LONG + ["../redis", ".hidden"])
@pytest.mark.parametrize("state", ["list", "verify", "cleanup", "prune"])
def test_set_never_leaves_its_kind(file_repo, tmp_path, bad_set, state):
    root = Path(file_repo["repository"][len("file://"):])
    _backup(Repository.from_options(file_repo), set_name="cache", kind="redis")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "dump.partial-1234abcd").write_bytes(b"not ours")
    before_outside, before_repo = tree_snapshot(outside), tree_snapshot(root)
    args = dict(file_repo, kind="postgresql", set=bad_set)
    if state == "prune":
        args["retention"] = {"keep_last": 1}
    if state == "cleanup":
        args["older_than"] = "0s"
    result = _run(state, args)
    msg = assert_clean_failure(result)
    assert msg.startswith("set "), msg
    assert tree_snapshot(outside) == before_outside
    assert tree_snapshot(root) == before_repo


# --------------------------------------------------------------------------- defect 5: missing repository

@pytest.mark.parametrize("state,args", [("list", {}), ("list", {"max_age": "26h"}), ("verify", {}), ("cleanup", {}),
                                        ("prune", {"retention": {"keep_last": 2}})])
def test_a_file_repository_that_does_not_exist_is_an_error(tmp_path, state, args):
    missing = tmp_path / "no-such-repo"
    result = _run(state, dict({"repository": "file://%s" % missing}, **args))
    assert_clean_failure(result, mentions=["does not exist", str(missing)])
    # Findings stay in the failed result so a report (failed_when: false) still shows it.
    assert result["status"] == "critical"
    assert [f["check"] for f in result["findings"]] == ["backup_repository"]
    assert result["repository"] == "file://%s" % missing and isinstance(result["duration_s"], float)
    assert not missing.exists()


def test_verify_of_a_set_without_backups_fails(file_repo):
    result = run_module("backup_repo", dict(file_repo, state="verify", kind="postgresql", set="mistyped"))
    assert_clean_failure(result, mentions=["mistyped"])


# --------------------------------------------------------------------------- defect 6: killed S3 upload

_KILLED_UPLOAD = textwrap.dedent("""
    import json, os, sys
    from tests.harness.collection import ensure_collection_path
    ensure_collection_path()
    from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

    class Endless:
        def read(self, size=-1):
            return os.urandom(1 << 20)

    repo = Repository.from_options(json.loads(sys.argv[1]))
    with repo.new_backup("postgresql", "killed") as backup:
        backup.add_object("data", Endless(), compression="none")
""")


def test_an_s3_backup_killed_mid_upload_is_listed_as_incomplete(s3_server, s3_bucket):
    options = s3_server.repository_options(s3_bucket)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_UPLOAD, json.dumps(options)], cwd=str(REPO), env=ansible_env())
    client = s3_server.client()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            uploads = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
            if uploads and client.list_parts(Bucket=s3_bucket, Key=uploads[0]["Key"],
                                             UploadId=uploads[0]["UploadId"]).get("Parts"):
                break
            assert proc.poll() is None, "the backup process ended before uploading a part"
            time.sleep(0.2)
        else:
            pytest.fail("no multipart upload with a part appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    listed = run_module("backup_repo_info", options)
    assert not listed.get("failed"), listed
    assert listed["backups"] == []
    assert len(listed["incomplete"]) == 1, listed["incomplete"]
    item = listed["incomplete"][0]
    assert item["set"] == "killed" and "unfinished upload" in item["reason"] and item["objects"] == ["data"]
    assert [f["check"] for f in listed["findings"]] == ["backup_incomplete"]
    cleaned = run_module("backup_repo", dict(options, state="cleanup", older_than="0s"))
    assert len(cleaned["aborted_uploads"]) == 1
    assert run_module("backup_repo_info", options)["incomplete"] == []


# --------------------------------------------------------------------------- defect 7 and 11: identities

def test_identity_text_as_age_keygen_writes_it_is_accepted(tmp_path):
    key_file = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
    text = key_file.read_text()
    assert text.startswith("#"), "age-keygen writes comment lines first"
    recipient = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("# public key:")][0]
    repo_options = {"repository": "file://%s" % (tmp_path / "repo")}
    _backup(Repository.from_options(repo_options), recipients=[recipient])
    for identity in (text, str(key_file)):
        result = run_module("backup_repo", dict(repo_options, state="verify", encryption_identity=identity))
        assert not result.get("failed"), result
        assert result["verified"][0]["level"] == "decrypt" and result["verified"][0]["ok"]


@pytest.mark.parametrize("content", [os.urandom(4096), b"\xff\xfe\x00binary", b"# only a comment\n", b"not a key\n"])
def test_identity_files_that_are_not_identities_fail_cleanly(tmp_path, content):
    repo_options = {"repository": "file://%s" % (tmp_path / "repo")}
    _backup(Repository.from_options(repo_options))
    identity = tmp_path / "identity.bin"
    identity.write_bytes(content)
    result = run_module("backup_repo", dict(repo_options, state="verify", encryption_identity=str(identity)))
    assert_clean_failure(result, mentions=["encryption_identity"])


def test_a_wrong_identity_value_is_never_echoed(tmp_path):
    repo_options = {"repository": "file://%s" % (tmp_path / "repo")}
    _backup(Repository.from_options(repo_options))
    secret = "AGE-SECRET-KEY-1NOTAREALKEYBUTSECRETANYWAY"
    result = run_module("backup_repo", dict(repo_options, state="verify", encryption_identity=secret))
    assert_clean_failure(result, secrets=[secret], mentions=["encryption_identity"])


# --------------------------------------------------------------------------- defect 9: full disk

@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_repository_names_the_object_and_leaves_nothing(tiny_filesystem):
    repo = Repository.from_options({"repository": "file://%s" % tiny_filesystem})
    with pytest.raises(StreamError) as raised:
        _backup(repo, data=os.urandom(2 << 20))
    message = raised.value.msg
    assert "No space left on device" in message
    assert str(tiny_filesystem / "postgresql" / "app") in message and "/data" in message
    assert list(tiny_filesystem.iterdir()) == [], "the failed backup left %s" % list(tiny_filesystem.rglob("*"))


def test_a_bad_recipient_leaves_no_empty_directories(tmp_path):
    root = tmp_path / "repo"
    repo = Repository.from_options({"repository": "file://%s" % root})
    earlier = _backup(repo)
    with pytest.raises(RunbookError, match="not an age X25519 public key"):
        _backup(repo, recipients=["age1notarecipient"])
    assert sorted(p.name for p in (root / "postgresql" / "app").iterdir()) == [earlier["id"]]


def test_object_names_and_sets_are_checked_when_writing(tmp_path):
    repo = Repository.from_options({"repository": "file://%s" % (tmp_path / "repo")})
    for bad in TRAVERSAL + CONTROL:
        with pytest.raises(RunbookError):
            repo.new_backup("postgresql", bad)
        with repo.new_backup("postgresql", "app") as backup:
            with pytest.raises(RunbookError):
                backup.add_object(bad, _Reader(b"x"))
    assert not (tmp_path / "outside").exists()


def _assert_full_disk_failure(result: dict, mount: Path, secrets: t.Sequence[str]) -> None:
    msg = assert_clean_failure(result, secrets=secrets)
    assert "No space left on device" in msg, msg
    assert str(mount) in msg, msg
    # Nothing left under a final name and no empty backup directories; a retry has room again.
    leftovers = [p for p in mount.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers
    assert [p for p in mount.rglob("*") if p.is_dir() and p.parent.name == "full"] == []


def test_pg_backup_into_a_full_repository_names_the_place_and_commits_nothing(postgres, tiny_filesystem):
    postgres.psql("DROP DATABASE IF EXISTS diskfull")
    postgres.psql("CREATE DATABASE diskfull")
    postgres.psql("CREATE TABLE filler AS SELECT md5(random()::text) || md5(random()::text) AS v "
                  "FROM generate_series(1, 60000)", db="diskfull")
    result = run_module("pg_backup", dict(postgres.login, db="diskfull", set="full",
                                          repository="file://%s" % tiny_filesystem))
    _assert_full_disk_failure(result, tiny_filesystem, [postgres.password])


def test_redis_snapshot_into_a_full_repository_names_the_place_and_commits_nothing(service_factory, tiny_filesystem):
    from tests.harness.services import RedisServer
    server = service_factory.add(RedisServer(service_factory.workdir("redis-full"), name="redis-full"))
    client = server.client()
    for index in range(64):
        client.set("filler:%d" % index, os.urandom(32 * 1024))
    result = run_module("redis_snapshot", dict(server.login, set="full", repository="file://%s" % tiny_filesystem))
    _assert_full_disk_failure(result, tiny_filesystem, [server.password])
