"""backup_repo, backup_repo_info and the streaming pipeline against a real directory and a real S3 API (moto)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from ansible_collections.runbook.ops.plugins.module_utils._stream import StreamError
from tests.harness.collection import REPO, ansible_env, run_module, run_playbook
from tests.harness.proxy import FaultProxy
from tests.harness.services import MotoS3Server


def _backup(repo: Repository, set_name: str = "app", data: bytes = b"payload " * 1000, when=None,
            recipients=(), labels=None) -> dict:
    with repo.new_backup("postgresql", set_name, labels=labels, now=when) as backup:
        backup.add_object("data", _Reader(data), recipients=list(recipients))
        return backup.commit(fmt="raw", compression={"algorithm": "zstd"})


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        size = len(self.data) if size < 0 else size
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


def _flip_byte(repository: dict, key: str, s3_server=None) -> None:
    url = repository["repository"]
    if url.startswith("file://"):
        path = Path(url[len("file://"):]) / key
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
        return
    bucket, prefix = url[len("s3://"):].split("/", 1)
    client = s3_server.client()
    full = "%s/%s" % (prefix, key)
    raw = bytearray(client.get_object(Bucket=bucket, Key=full)["Body"].read())
    raw[len(raw) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=full, Body=bytes(raw))


def test_stream_round_trip_200_mib_with_bounded_memory(repository, age_key):
    """200 MiB through zstd + age into the repository and back: identical bytes, peak RSS bounded."""
    proc = subprocess.run([sys.executable, "-m", "tests.harness.roundtrip", "200", json.dumps(repository), age_key.identity],
                          capture_output=True, text=True, cwd=str(REPO), env=ansible_env(), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["written"] == 200 * 1048576
    assert result["read"] == result["written"]
    assert result["read_sha256"] == result["written_sha256"]
    assert result["stored"] < result["written"]  # the repetitive half compressed
    # Everything is streamed: far below the data size (imports alone take ~40 MiB).
    assert result["peak_rss_mib"] < 150, result


def test_list_verify_and_decrypt(repository, age_key):
    repo = Repository.from_options(repository)
    first = _backup(repo, labels={"env": "test"})
    second = _backup(repo, recipients=[age_key.recipient])
    listed = run_module("backup_repo_info", dict(repository))
    assert not listed.get("failed"), listed
    assert [b["id"] for b in listed["backups"]] == [second["id"], first["id"]]
    assert listed["backups"][0]["encrypted"] is True and listed["backups"][1]["encrypted"] is False
    assert listed["backups"][1]["labels"] == {"env": "test"}
    assert listed["incomplete"] == []

    checked = run_module("backup_repo", dict(repository, state="verify"))
    assert not checked.get("failed"), checked
    levels = {v["backup_id"]: v["level"] for v in checked["verified"]}
    assert levels == {first["id"]: "decrypt", second["id"]: "checksum"}

    deep = run_module("backup_repo", dict(repository, state="verify", kind="postgresql", set="app",
                                          backup_id=second["id"], encryption_identity=age_key.identity))
    assert not deep.get("failed"), deep
    assert deep["verified"] == [{"backup_id": second["id"], "kind": "postgresql", "set": "app",
                                 "level": "decrypt", "ok": True, "problems": [],
                                 "details": {"objects": 1, "stored_bytes": second["size"], "raw_bytes": second["raw_size"]}}]
    assert "1 backup in %s read back intact (decrypt)" % repository["repository"] in deep["msg"]


def test_flipped_byte_is_reported_with_the_object_name(repository, age_key, request):
    repo = Repository.from_options(repository)
    manifest = _backup(repo, data=os.urandom(300000), recipients=[age_key.recipient])
    s3 = request.getfixturevalue("s3_server") if repository["repository"].startswith("s3://") else None
    _flip_byte(repository, "postgresql/app/%s/data" % manifest["id"], s3)
    result = run_module("backup_repo", dict(repository, state="verify"))
    assert result.get("failed")
    assert result["verified"][0]["ok"] is False
    assert "data: sha256" in result["verified"][0]["problems"][0]
    assert manifest["id"] in result["msg"]
    # With the identity, decryption fails too, and the message still names the object and the checksum.
    deep = run_module("backup_repo", dict(repository, state="verify", encryption_identity=age_key.identity))
    assert deep.get("failed")
    assert "data" in deep["verified"][0]["problems"][0] and "sha256" in deep["verified"][0]["problems"][0]


def test_wrong_identity_fails_clearly(repository, age_key):
    import pyrage
    repo = Repository.from_options(repository)
    _backup(repo, recipients=[age_key.recipient])
    other = str(pyrage.x25519.Identity.generate())
    result = run_module("backup_repo", dict(repository, state="verify", encryption_identity=other))
    assert result.get("failed")
    assert "does not match any recipient" in result["msg"]
    assert other not in json.dumps(result)
    garbage = run_module("backup_repo", dict(repository, state="verify", encryption_identity="AGE-SECRET-KEY-1NOPE"))
    assert garbage.get("failed") and "not an age X25519 secret key" in garbage["msg"]
    assert "AGE-SECRET-KEY-1NOPE" not in json.dumps({k: v for k, v in garbage.items() if k != "invocation"})


def test_backup_without_manifest_is_incomplete_everywhere(repository):
    repo = Repository.from_options(repository)
    complete = _backup(repo, when=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    writer = repo.new_backup("postgresql", "app")
    writer.add_object("data", _Reader(b"never committed" * 100))
    # The process "dies" here: no commit, no abort.
    listed = run_module("backup_repo_info", dict(repository))
    assert [b["id"] for b in listed["backups"]] == [complete["id"]]
    assert [i["backup_id"] for i in listed["incomplete"]] == [writer.backup_id]
    assert listed["incomplete"][0]["objects"] == ["data"]
    assert repo.latest("postgresql", "app")["id"] == complete["id"]
    pruned = run_module("backup_repo", dict(repository, state="prune", retention={"keep_last": 1}))
    assert pruned["pruned"] == [] and [k["id"] for k in pruned["kept"]] == [complete["id"]]
    # cleanup leaves young incomplete backups alone (one might be running), removes old ones.
    young = run_module("backup_repo", dict(repository, state="cleanup"))
    assert young["changed"] is False and young["cleaned"] == []
    check = run_module("backup_repo", dict(repository, state="cleanup", older_than="0s"), check_mode=True)
    assert check["changed"] is True and [r["backup_id"] for r in check["cleaned"]] == [writer.backup_id]
    assert check["msg"].startswith("would remove 1 incomplete backup")
    assert run_module("backup_repo_info", dict(repository))["incomplete"] != []
    done = run_module("backup_repo", dict(repository, state="cleanup", older_than="0s"))
    assert [r["backup_id"] for r in done["cleaned"]] == [writer.backup_id]
    assert [f["object"] for f in done["findings"]] == ["Backup/postgresql/app/%s" % writer.backup_id]
    after = run_module("backup_repo_info", dict(repository))
    assert after["incomplete"] == [] and [b["id"] for b in after["backups"]] == [complete["id"]]


def test_prune_matches_forget_semantics_and_check_mode(repository):
    repo = Repository.from_options(repository)
    stamps = [datetime.datetime(2026, 11, day, hour, tzinfo=datetime.timezone.utc)
              for day in (20, 21, 22) for hour in (1, 13)]
    made = {when: _backup(repo, when=when)["id"] for when in stamps}
    policy = {"keep_last": 1, "keep_daily": 2}
    preview = run_module("backup_repo", dict(repository, state="prune", retention=policy), check_mode=True, diff=True)
    expected_kept = {made[stamps[5]], made[stamps[3]]}  # newest (Nov 22 13h) and newest of Nov 21
    assert {k["id"] for k in preview["kept"]} == expected_kept
    assert {r["id"] for r in preview["pruned"]} == set(made.values()) - expected_kept
    assert preview["diff"]["after"]["backups"] == sorted(expected_kept)
    assert len(run_module("backup_repo_info", dict(repository))["backups"]) == 6  # check mode removed nothing
    done = run_module("backup_repo", dict(repository, state="prune", retention=policy))
    assert done["changed"] is True
    assert {b["id"] for b in run_module("backup_repo_info", dict(repository))["backups"]} == expected_kept
    again = run_module("backup_repo", dict(repository, state="prune", retention=policy))
    assert again["changed"] is False


def test_prune_without_policy_is_refused(repository):
    # No policy at all is refused by the argument spec; one that keeps nothing by the module.
    result = run_module("backup_repo", dict(repository, state="prune"))
    assert result.get("failed") and "state is prune but all of the following are missing: retention" in result["msg"]
    zero = run_module("backup_repo", dict(repository, state="prune", retention={"keep_last": 0}))
    assert zero.get("failed") and "needs a retention policy" in zero["msg"]


def test_state_list_moved_to_backup_repo_info(repository):
    result = run_module("backup_repo", dict(repository, state="list"))
    assert result.get("failed") and "value of state must be one of: verify, prune, cleanup" in result["msg"]
    assert run_module("backup_repo", dict(repository)).get("failed")  # state is required


def test_prune_with_keep_within_and_keep_yearly(repository):
    """keep_within counts back from the newest backup of each set (restic), not from now."""
    repo = Repository.from_options(repository)
    stamps = [datetime.datetime(2020, 3, 1, tzinfo=datetime.timezone.utc),
              datetime.datetime(2021, 6, 1, tzinfo=datetime.timezone.utc),
              datetime.datetime(2021, 12, 1, tzinfo=datetime.timezone.utc),
              datetime.datetime(2022, 1, 10, tzinfo=datetime.timezone.utc),
              datetime.datetime(2022, 1, 20, tzinfo=datetime.timezone.utc)]
    made = [_backup(repo, when=when)["id"] for when in stamps]
    within = run_module("backup_repo", dict(repository, state="prune", retention={"keep_within": "1m"}), check_mode=True)
    assert not within.get("failed"), within
    # Years old, but within a month of the newest backup (2022-01-20): both January backups stay.
    assert [k["id"] for k in within["kept"]] == [made[4], made[3]]
    yearly = run_module("backup_repo", dict(repository, state="prune", retention={"keep_yearly": 2}))
    assert [k["id"] for k in yearly["kept"]] == [made[4], made[2]]
    assert {p["id"] for p in yearly["pruned"]} == {made[0], made[1], made[3]}
    bad = run_module("backup_repo", dict(repository, state="prune", retention={"keep_within": "30 days"}))
    assert bad.get("failed") and "keep_within" in bad["msg"] and "m means months" in bad["msg"]


def test_s3_cut_mid_upload_leaves_nothing_final(service_factory, tmp_path):
    """S3 goes away mid-upload: the backup fails naming the store stage, no object exists under a
    final name, and cleanup aborts the multipart upload left behind."""
    s3 = service_factory.add(MotoS3Server(service_factory.workdir("s3-fault")))
    s3.create_bucket("fault-bucket")
    proxy = FaultProxy(s3.host, s3.port)
    options = dict(s3.repository_options("fault-bucket"), s3_endpoint_url=proxy.url)
    repo = Repository.from_options(options)

    class SlowSource:
        """Endless incompressible data; cuts the proxy once a few parts went through."""

        def __init__(self) -> None:
            self.sent = 0

        def read(self, size: int = -1) -> bytes:
            self.sent += 1 << 20
            if self.sent == 40 << 20:
                threading.Thread(target=proxy.cut, daemon=True).start()
            return os.urandom(1 << 20)

    try:
        with pytest.raises(StreamError) as caught:
            with repo.new_backup("postgresql", "app") as backup:
                backup.add_object("data", SlowSource(), compression="none")
                backup.commit()
        assert caught.value.stage == "store"
        assert "s3://fault-bucket/backups/postgresql/app/" in caught.value.msg
        proxy.restore()
        client = s3.client()
        assert client.list_objects_v2(Bucket="fault-bucket").get("KeyCount", 0) == 0
        # The abort could not reach S3: the unfinished upload is still there until cleanup.
        uploads = client.list_multipart_uploads(Bucket="fault-bucket").get("Uploads", [])
        assert len(uploads) == 1
        result = run_module("backup_repo", dict(options, state="cleanup", older_than="0s"))
        assert not result.get("failed"), result
        assert len(result["aborted_uploads"]) == 1
        assert client.list_multipart_uploads(Bucket="fault-bucket").get("Uploads", []) == []
        assert run_module("backup_repo_info", options)["backups"] == []
    finally:
        proxy.close()


def test_unreachable_s3_and_missing_bucket_fail_clearly(s3_server):
    down = run_module("backup_repo_info", dict(s3_server.repository_options("nowhere"), s3_endpoint_url="http://127.0.0.1:9"))
    assert down.get("failed") and "s3://nowhere/backups" in down["msg"] and "Traceback" not in down["msg"]
    missing = run_module("backup_repo_info", s3_server.repository_options("no-such-bucket"))
    assert missing.get("failed") and "bucket no-such-bucket does not exist" in missing["msg"]
    bad_url = run_module("backup_repo_info", {"repository": "ftp://x/y"})
    assert bad_url.get("failed") and "unsupported scheme" in bad_url["msg"]


def test_no_secret_in_verbose_output(s3_server, s3_bucket, age_key, tmp_path):
    repo_options = s3_server.repository_options(s3_bucket)
    _backup(Repository.from_options(repo_options), recipients=[age_key.recipient])
    playbook = tmp_path / "verify.yml"
    playbook.write_text("""
- name: Verify with secrets
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Verify the repository
      runbook.ops.backup_repo: "{{ repo | combine({'state': 'verify', 'encryption_identity': identity}) }}"
    - name: Fail with a wrong identity
      runbook.ops.backup_repo: "{{ repo | combine({'state': 'verify', 'encryption_identity': wrong}) }}"
      ignore_errors: true
""")
    import pyrage
    wrong = str(pyrage.x25519.Identity.generate())
    proc = run_playbook(playbook, extra_vars={"repo": repo_options, "identity": age_key.identity, "wrong": wrong},
                        verbosity=4)
    assert "ok=2" in proc.stdout and "ignored=1" in proc.stdout, proc.stdout[-3000:]
    for secret in (age_key.identity, wrong, s3_server.secret_key):
        # Extra vars are echoed by ansible itself only if logged; the module output must never hold them.
        module_output = proc.stdout.split("PLAY [", 1)[1]
        assert secret not in module_output, "secret leaked at -vvvv"


def test_findings_for_freshness_incomplete_and_verify(repository):
    repo = Repository.from_options(repository)
    old = _backup(repo, set_name="old", when=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    _backup(repo, set_name="fresh")
    repo.new_backup("postgresql", "fresh").add_object("data", _Reader(b"x" * 10))  # never committed
    listed = run_module("backup_repo_info", dict(repository, max_age="26h"))
    by_object = {f["object"]: f for f in listed["findings"]}
    assert listed["status"] == "critical"
    assert by_object["BackupSet/postgresql/old"]["severity"] == "critical"
    assert "above max_age 26h" in by_object["BackupSet/postgresql/old"]["message"]
    assert by_object["BackupSet/postgresql/fresh"]["severity"] == "ok"
    assert [f["check"] for f in listed["findings"] if f["severity"] == "warning"] == ["backup_incomplete"]
    assert listed["summary"] == {"ok": 1, "info": 0, "warning": 1, "unknown": 0, "critical": 1}
    _backup(repo, set_name="old")
    checked = run_module("backup_repo", dict(repository, state="verify", latest_only=True))
    assert checked["status"] == "ok" and len(checked["findings"]) == 2
    assert old["id"] not in json.dumps(checked["findings"])


def test_stored_objects_open_with_the_age_and_zstd_command_line_tools(tmp_path, age_key):
    """Disaster recovery without this collection: `age -d | zstd -d` gives back the original bytes."""
    repo = Repository.from_options({"repository": "file://%s" % (tmp_path / "repo")})
    data = os.urandom(200000) + b"plain text tail\n" * 5000
    manifest = _backup(repo, data=data, recipients=[age_key.recipient])
    key_file = tmp_path / "identity.txt"
    key_file.write_text(age_key.identity + "\n")
    stored = tmp_path / "repo" / "postgresql" / "app" / manifest["id"] / "data"
    proc = subprocess.run("age -d -i %s %s | zstd -d" % (key_file, stored), shell=True, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


@pytest.mark.parametrize("checksum", ["when_supported", "when_required"])
def test_s3_server_side_encryption_and_checksum_modes(s3_server, s3_bucket, checksum):
    options = dict(s3_server.repository_options(s3_bucket), s3_sse="AES256", s3_checksum=checksum)
    repo = Repository.from_options(options)
    # Large enough for a multipart upload (the first part is 16 MiB), small parts of text after it.
    manifest = _backup(repo, data=os.urandom(17 << 20) + b"tail" * 1000)
    client = s3_server.client()
    for name in ("data", "manifest.json"):
        head = client.head_object(Bucket=s3_bucket, Key="backups/postgresql/app/%s/%s" % (manifest["id"], name))
        assert head["ServerSideEncryption"] == "AES256"
    checked = run_module("backup_repo", dict(options, state="verify"))
    assert checked["verified"][0]["ok"] is True
