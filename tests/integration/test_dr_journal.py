"""dr_journal run as real module processes, one per moment of a drill, storing into moto S3: the timeline
from separate processes, RTO and RPO beside the objectives, the report files, the stored drill listed by
backup_repo_info kind=drill and verified by backup_repo, a missed RPO that fails after storing, phases
appended by parallel processes, a run across a reboot, and an RPO taken from the canary restored with the data
(never from the backup's own time)."""

from __future__ import annotations

import datetime
import json
import time
import typing as t
import uuid
from pathlib import Path

from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository
from tests.harness.collection import run_module


def journal(path: Path, **args: t.Any) -> t.Dict[str, t.Any]:
    result = run_module("dr_journal", dict(path=str(path), **args))
    assert "unexpected" not in result.get("msg", ""), result
    return result


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def test_a_drill_measured_across_processes_stored_and_listed(s3_server, s3_bucket, tmp_path: Path):
    repository = s3_server.repository_options(s3_bucket)
    path = tmp_path / "drill.jsonl"
    started = journal(path, state="started", platform="personapass")
    assert not started.get("failed"), started
    began = time.monotonic()
    for phase in ("restore_data", "validate"):
        assert not journal(path, state="phase", phase=phase, event="begin").get("failed")
        time.sleep(0.3)
        ended = journal(path, state="phase", phase=phase, event="end", detail={"note": phase})
        assert ended["phase_seconds"] >= 0.3 and ended["elapsed_seconds"] >= ended["phase_seconds"]
    elapsed = time.monotonic() - began
    # The canary was written 25 minutes before the start: that, not any backup's time, is the recovery point.
    canary_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=25)
    finished = journal(path, state="finished", store=True, objectives={"rto": "1h", "rpo": "1h"},
                       data_times=[{"source": "postgresql/personapass", "newest_at": iso(canary_at), "method": "canary"}],
                       outputs={"markdown": str(tmp_path / "drill.md"), "json": str(tmp_path / "drill.json")},
                       **repository)
    assert not finished.get("failed"), finished
    assert finished["changed"] and finished["status"] == "ok", finished
    # RTO covers both phases and the time between the module processes, from the start record on.
    assert 0.6 <= finished["rto_seconds"] <= elapsed + 5, (finished["rto_seconds"], elapsed)
    assert 25 * 60 - 5 <= finished["rpo_seconds"] <= 25 * 60 + 60, finished["rpo_seconds"]
    assert finished["met"] == {"rto": True, "rpo": True}
    assert [(p["name"], p["status"]) for p in finished["phases"]] == [("restore_data", "ok"), ("validate", "ok")]
    assert finished["stored"]["kind"] == "drill" and finished["stored"]["set"] == "personapass-drill"
    assert "RTO" in finished["msg"] and "objective 1h, met" in finished["msg"]

    listed = run_module("backup_repo_info", dict(kind="drill", set="personapass-drill", **repository))
    assert not listed.get("failed"), listed
    assert [b["id"] for b in listed["backups"]] == [finished["stored"]["backup_id"]]
    assert listed["backups"][0]["labels"]["run_id"] == started["run_id"]
    assert listed["backups"][0]["labels"]["status"] == "ok"
    verified = run_module("backup_repo", dict(state="verify", kind="drill", **repository))
    assert not verified.get("failed") and [v["ok"] for v in verified["verified"]] == [True], verified

    # The stored journal is the one on disk up to the verdict, and the stored report is the one written.
    repo = Repository.from_options(repository)
    manifest = repo.get("drill", "personapass-drill", finished["stored"]["backup_id"])
    assert sorted(o["name"] for o in manifest["objects"]) == ["journal.jsonl", "report.json", "report.md", "verdict.json"]
    stored_md = _read(repo, manifest, "report.md")
    assert stored_md == (tmp_path / "drill.md").read_bytes()
    stored_journal = _read(repo, manifest, "journal.jsonl").decode().splitlines()
    on_disk = path.read_text().splitlines()
    assert on_disk[:-1] == stored_journal and json.loads(on_disk[-1])["type"] == "finished"
    report = json.loads((tmp_path / "drill.json").read_text())
    assert [s["name"] for s in report["sections"]] == ["Phases", "Objectives"]

    # Finishing again changes nothing and stores nothing twice.
    outputs = {"markdown": str(tmp_path / "drill.md"), "json": str(tmp_path / "drill.json")}
    again = journal(path, state="finished", store=True, outputs=outputs, **repository)
    assert again["changed"] is False and again["stored"] == finished["stored"], again
    assert len(run_module("backup_repo_info", dict(kind="drill", **repository))["backups"]) == 1


def _read(repo: Repository, manifest: t.Dict[str, t.Any], name: str) -> bytes:
    import io

    sink = io.BytesIO()
    entry = next(o for o in manifest["objects"] if o["name"] == name)
    repo.read_object(manifest, entry, sink)
    return sink.getvalue()


def test_a_missed_rpo_fails_after_storing_and_an_unread_source_is_never_guessed(s3_server, s3_bucket, tmp_path: Path):
    repository = s3_server.repository_options(s3_bucket)
    path = tmp_path / "drill.jsonl"
    # A restore after an incident: RPO is measured from the incident's time.
    incident = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    assert not journal(path, state="started", platform="rust-security", mode="restore",
                       reference_time=iso(incident)).get("failed")
    for event in ("begin", "end"):
        journal(path, state="phase", phase="validate", event=event)
    stale = incident - datetime.timedelta(hours=2)
    missed = journal(path, state="finished", store=True, objectives={"rto": "45m", "rpo": "1h"},
                     data_times=[{"source": "postgresql/auth", "newest_at": iso(stale), "method": "column"},
                                 {"source": "redis/sessions", "newest_at": iso(incident - datetime.timedelta(minutes=3))}],
                     **repository)
    assert missed.get("failed"), missed
    assert "RPO 2h misses the objective of 1h" in missed["msg"] and missed["stored"]["backup_id"] in missed["msg"]
    assert missed["rpo_seconds"] == 7200.0 and missed["met"] == {"rto": True, "rpo": False}
    assert missed["recovery_point"]["source"] == "postgresql/auth"
    stored = run_module("backup_repo_info", dict(kind="drill", set="rust-security-drill", **repository))["backups"]
    assert [b["id"] for b in stored] == [missed["stored"]["backup_id"]]
    assert stored[0]["labels"]["mode"] == "restore" and stored[0]["labels"]["status"] == "critical"

    # A source whose data time could not be read: RPO is unmeasured, not taken from the other source.
    path2 = tmp_path / "drill2.jsonl"
    journal(path2, state="started", platform="rust-security")
    journal(path2, state="phase", phase="validate", event="begin")
    journal(path2, state="phase", phase="validate", event="end")
    unread = journal(path2, state="finished", objectives={"rpo": "1h"},
                     data_times=[{"source": "postgresql/auth", "newest_at": iso(incident)},
                                 {"source": "redis/sessions", "newest_at": None}])
    assert unread.get("failed") and unread["rpo_seconds"] is None and unread["met"]["rpo"] is None, unread
    assert "RPO not measured: no data time for redis/sessions" in unread["msg"]


def test_phases_from_parallel_processes_and_check_mode(tmp_path: Path):
    import concurrent.futures

    path = tmp_path / "drill.jsonl"
    assert run_module("dr_journal", dict(path=str(path), state="started", platform="lab"), check_mode=True)["run_id"]
    assert not path.exists()
    journal(path, state="started", platform="lab")
    phases = ["restore_%d" % n for n in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: journal(path, state="phase", phase=p, event="begin"), phases))
        list(pool.map(lambda p: journal(path, state="phase", phase=p, event="end"), phases))
    lines = path.read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line) for line in lines)  # no interleaved write
    finished = journal(path, state="finished", recovered_phase="restore_3", fail_on_missed=False)
    assert sorted(p["name"] for p in finished["phases"]) == phases
    assert all(p["status"] == "ok" for p in finished["phases"])
    assert finished["rto_seconds"] is not None and finished["status"] == "critical"  # RPO: no data_times given


def test_a_run_across_a_reboot_is_measured_in_utc_with_a_warning(tmp_path: Path):
    path = tmp_path / "drill.jsonl"
    journal(path, state="started", platform="lab")
    # The run started in another boot 10 minutes ago (as the journal would read after a reboot): its
    # monotonic reading means nothing now, so the intervals from it come from UTC.
    start = json.loads(path.read_text())
    start["clock"].update(boot_id="an-earlier-boot", monotonic=987654.0,
                          at=iso(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)))
    path.write_text(json.dumps(start) + "\n")
    begun = journal(path, state="phase", phase="validate", event="begin")
    assert 595 <= begun["elapsed_seconds"] <= 660, begun
    assert "rebooted" in json.dumps(begun.get("warnings")), begun  # a warning, in whatever form Ansible gives it
    ended = journal(path, state="phase", phase="validate", event="end")
    assert 0 <= ended["phase_seconds"] < 30  # both in this boot: the monotonic clock again
    finished = journal(path, state="finished", fail_on_missed=False, objectives={"rto": "1h"})
    assert 595 <= finished["rto_seconds"] <= 660 and finished["met"]["rto"] is True, finished
    clock = [f for f in finished["findings"] if f["check"] == "drill_clock"]
    assert clock and clock[0]["severity"] == "warning", finished["findings"]


def test_rpo_comes_from_the_canary_in_the_restored_data_not_from_the_backup(postgres, tmp_path: Path):
    """The canary written 10 minutes before the backup: the RPO a drill reports is at least 10 minutes,
    although the backup itself is seconds old (an RPO taken from the backup's time would say seconds)."""
    repository = {"repository": "file://%s" % (tmp_path / "repo")}
    suffix = uuid.uuid4().hex[:8]
    source, scratch = "rpo_source_%s" % suffix, "rpo_scratch_%s" % suffix
    postgres.psql('CREATE DATABASE "%s"' % source)
    try:
        written = run_module("data_canary", dict(postgres.login, service="postgresql", db=source))
        assert not written.get("failed"), written
        # As if written ten minutes before the backup (the lab cannot wait ten minutes).
        postgres.psql("UPDATE runbook_canary SET written_at = written_at - interval '10 minutes'", db=source)
        backup = run_module("pg_backup", dict(postgres.login, db=source, **repository))
        assert not backup.get("failed"), backup
        path = tmp_path / "drill.jsonl"
        journal(path, state="started", platform="lab")
        journal(path, state="phase", phase="restore_data", event="begin")
        restored = run_module("pg_backup", dict(postgres.login, **repository, state="restore", db=source, mode="new",
                                                scratch=True, target_db=scratch))
        assert not restored.get("failed"), restored
        journal(path, state="phase", phase="restore_data", event="end")
        journal(path, state="phase", phase="validate", event="begin")
        read = run_module("data_canary", dict(postgres.login, service="postgresql", db=scratch, state="read"))
        assert read["found"] and read["token"] == written["token"], read
        journal(path, state="phase", phase="validate", event="end")
        finished = journal(path, state="finished", objectives={"rpo": "5m"}, fail_on_missed=False, data_times=[
            {"source": "postgresql/%s" % source, "newest_at": read["written_at"], "method": "canary"}])
        assert finished["rpo_seconds"] >= 600, finished
        assert finished["met"]["rpo"] is False and finished["status"] == "critical"
        created = datetime.datetime.fromisoformat(backup["manifest"]["created"].replace("Z", "+00:00"))
        started = datetime.datetime.fromisoformat(finished["reference_time"].replace("Z", "+00:00"))
        assert (started - created).total_seconds() < 300  # the backup's own time would have met the objective
    finally:
        run_module("pg_backup", dict(postgres.login, state="dropped", db=source, target_db=scratch))
        postgres.psql('DROP DATABASE IF EXISTS "%s"' % source)
