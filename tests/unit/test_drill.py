"""dr_journal's pure logic: the timeline from both clocks (file order, phases out of order, a reboot),
RTO and RPO from the right clocks, the verdict, and the report's two sections."""

from __future__ import annotations

import datetime
import json
import typing as t
from pathlib import Path

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _drill
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, parse_time
from ansible_collections.runbook.ops.plugins.module_utils._drill import (
    DataTime, DrillOptions, Journal, Reading, interval, measure_rpo, measure_rto, parse_records, run_dr_journal,
    timeline, verdict_report)
from ansible_collections.runbook.ops.plugins.module_utils._report import render_markdown, PLACEHOLDER
from tests.harness.tasks import make_task, validated

T0 = parse_time("2026-11-24T03:00:00Z")
BOOT = "boot-a"


def reading(seconds: float, boot: str = BOOT, utc_seconds: t.Optional[float] = None, mono_base: float = 1000.0) -> Reading:
    """A reading ``seconds`` into the run: monotonic from ``mono_base``, UTC from T0 (or ``utc_seconds``)."""
    utc = T0 + datetime.timedelta(seconds=seconds if utc_seconds is None else utc_seconds)
    return Reading(utc=utc, monotonic=mono_base + seconds, boot_id=boot)


def event(phase: str, what: str, at: Reading, **detail: t.Any) -> t.Dict[str, t.Any]:
    return {"type": "phase", "phase": phase, "event": what, "detail": detail, "clock": at.record()}


START = reading(0)


def test_intervals_use_the_monotonic_clock_even_when_utc_jumps():
    # NTP stepped the wall clock back an hour in the middle: UTC says -3540 s, the monotonic clock 60 s.
    later = reading(60, utc_seconds=-3540)
    assert interval(START, later) == (60.0, True)


def test_intervals_across_a_reboot_fall_back_to_utc():
    # After a reboot the monotonic clock restarts near zero: subtracting it would give nonsense.
    after_reboot = Reading(utc=T0 + datetime.timedelta(seconds=900), monotonic=12.5, boot_id="boot-b")
    assert interval(START, after_reboot) == (900.0, False)
    # Without boot ids, a monotonic reading that went backwards is a reboot too.
    unknown = Reading(utc=T0 + datetime.timedelta(seconds=700), monotonic=3.0, boot_id=None)
    assert interval(Reading(T0, 1000.0, None), unknown) == (700.0, False)


def test_phases_are_read_by_their_clocks_not_by_file_order():
    # Two phases ran in parallel; their records were appended in an order unlike their times.
    records = [
        event("restore_redis", "end", reading(40)),
        event("restore_postgres", "begin", reading(5)),
        event("restore_redis", "begin", reading(10)),
        event("restore_postgres", "end", reading(70)),
    ]
    line = timeline(START, records)
    assert [span.name for span in line.phases] == ["restore_postgres", "restore_redis"]
    entries = [_drill.phase_entry(line, span) for span in line.phases]
    assert [(e["status"], e["seconds"]) for e in entries] == [("ok", 65.0), ("ok", 30.0)]
    assert not line.utc_fallback


def test_a_phase_recorded_out_of_order_is_reported_and_has_no_duration():
    # The role recorded the end before the begin (by the clock): never a negative or made-up duration.
    records = [event("restore_config", "end", reading(20)), event("restore_config", "begin", reading(30)),
               event("validate", "begin", reading(31)), event("validate", "end", reading(50))]
    line = timeline(START, records)
    entries = {e["name"]: e for e in (_drill.phase_entry(line, s) for s in line.phases)}
    assert entries["restore_config"]["status"] == "out_of_order"
    assert entries["restore_config"]["seconds"] is None
    found = _drill.phase_findings(line, list(entries.values()))
    flagged = [f for f in found if f["object"] == "Phase/restore_config"]
    assert flagged[0]["severity"] == "warning" and "out of order" in flagged[0]["message"]
    assert entries["validate"]["seconds"] == 19.0


def test_an_end_without_begin_a_failure_a_retry_and_a_phase_that_never_ended():
    records = [event("stop_consumers", "end", reading(3)),
               event("restore_data", "begin", reading(5)), event("restore_data", "failed", reading(9), step="pg"),
               event("restore_data", "begin", reading(12)), event("restore_data", "end", reading(30)),
               event("start_workloads", "begin", reading(31)),
               event("validate", "begin", reading(32)), event("validate", "failed", reading(33))]
    line = timeline(START, records)
    spans = {s.name: s for s in line.phases}
    assert spans["stop_consumers"].status == "no_begin"
    assert spans["restore_data"].status == "ok" and spans["restore_data"].attempts == 2
    assert line.seconds(spans["restore_data"]) == 25.0  # first begin to the last end, the retry included
    assert spans["start_workloads"].status == "running"
    assert spans["validate"].status == "failed"
    severities = {f["object"]: f["severity"] for f in _drill.phase_findings(
        line, [_drill.phase_entry(line, s) for s in line.phases])}
    assert severities == {"Phase/stop_consumers": "warning", "Phase/restore_data": "ok",
                          "Phase/start_workloads": "critical", "Phase/validate": "critical"}
    assert measure_rto(line, "validate") == (None, "phase validate did not end successfully (status failed)")


def test_rto_runs_from_the_start_of_the_run_to_the_end_of_the_recovered_phase():
    # Not from the end of the restore: the restore ended at 400 s, validation at 520 s.
    records = [event("restore_data", "begin", reading(100)), event("restore_data", "end", reading(400)),
               event("validate", "begin", reading(401)), event("validate", "end", reading(520))]
    line = timeline(START, records)
    assert measure_rto(line, "validate") == (520.0, "")
    assert measure_rto(line, "restore_data") == (400.0, "")
    assert measure_rto(line, "smoke_test")[0] is None


def test_a_reboot_between_events_measures_across_it_in_utc_and_says_so():
    records = [event("restore_data", "begin", reading(10)),
               # The host rebooted: a new boot id, a monotonic clock restarted at 5 s, UTC 1200 s on.
               event("restore_data", "end", Reading(T0 + datetime.timedelta(seconds=1200), 5.0, "boot-b")),
               event("validate", "begin", Reading(T0 + datetime.timedelta(seconds=1201), 6.0, "boot-b")),
               event("validate", "end", Reading(T0 + datetime.timedelta(seconds=1260), 65.0, "boot-b"))]
    line = timeline(START, records)
    assert measure_rto(line, "validate") == (1260.0, "")
    spans = {s.name: s for s in line.phases}
    assert line.seconds(spans["restore_data"]) == 1190.0
    assert line.seconds(spans["validate"]) == 59.0  # both readings from the new boot: monotonic again
    assert line.utc_fallback


def test_rpo_is_the_reference_minus_the_oldest_newest_data_time():
    reference = T0
    sources = [DataTime("postgresql/auth", T0 - datetime.timedelta(minutes=12), "canary"),
               DataTime("redis/sessions", T0 - datetime.timedelta(minutes=47), "canary"),
               DataTime("postgresql/audit", T0 - datetime.timedelta(minutes=3), "column")]
    seconds, why, point = measure_rpo(reference, sources)
    assert seconds == 47 * 60 and why == "" and point is not None and point.source == "redis/sessions"


def test_a_missing_data_time_leaves_rpo_unmeasured_never_a_number_from_the_others():
    sources = [DataTime("postgresql/auth", T0 - datetime.timedelta(minutes=12), "canary"),
               DataTime("redis/sessions", None, "canary")]
    assert measure_rpo(T0, sources) == (None, "no data time for redis/sessions", None)
    assert measure_rpo(T0, [])[0] is None
    found = _drill.data_time_findings(T0, sources)
    assert [f["severity"] for f in found] == ["ok", "critical"]


def test_objectives_judged_and_not_given_objectives_only_reported():
    assert _drill.objective_finding("rto", 100.0, "", 3600.0, {})[1] is True
    missed, met = _drill.objective_finding("rpo", 4000.0, "", 3600.0, {})
    assert met is False and missed["severity"] == "critical" and "misses the objective of 1h" in missed["message"]
    info, met = _drill.objective_finding("rto", 100.0, "", None, {})
    assert met is None and info["severity"] == "info"
    unmeasured, met = _drill.objective_finding("rpo", None, "no data time for x", 3600.0, {})
    assert met is None and unmeasured["severity"] == "critical" and "not measured" in unmeasured["message"]


def test_records_that_are_not_a_journal_are_refused_with_the_line():
    with pytest.raises(RunbookError, match="line 2 is not JSON"):
        parse_records(b'{"type": "started"}\n{"type": "pha', "/j")
    with pytest.raises(RunbookError, match="does not begin with exactly one started record"):
        parse_records(b'{"type": "phase"}\n', "/j")


# --------------------------------------------------------------------------- the states, on a file

def task(params: t.Dict[str, t.Any], check_mode: bool = False):
    return make_task("dr_journal", DrillOptions.from_params, params, check_mode=check_mode)


def write_journal(path: Path, records: t.List[t.Dict[str, t.Any]], reference: str = "2026-11-24T03:00:00Z") -> None:
    start = {"type": "started", "version": 1, "run_id": "20261124T030000Z-abc123", "platform": "lab", "mode": "drill",
             "reference_time": reference, "host": "h", "clock": START.record()}
    path.write_text("".join(json.dumps(r) + "\n" for r in [start] + records))


def test_finished_judges_a_journal_and_renders_both_sections(tmp_path: Path, monkeypatch):
    path = tmp_path / "drill.jsonl"
    write_journal(path, [event("restore_data", "begin", reading(60)), event("restore_data", "end", reading(900)),
                         event("validate", "begin", reading(901)), event("validate", "end", reading(1000))])
    monkeypatch.setattr(_drill.Reading, "now", classmethod(lambda cls: reading(1010)))
    finished = task(dict(state="finished", path=str(path), objectives={"rto": "20m", "rpo": "1h"},
                         data_times=[{"source": "postgresql/auth", "newest_at": "2026-11-24T02:35:00Z"},
                                     {"source": "redis/sessions", "newest_at": "2026-11-24T02:50:00Z"}],
                         outputs={"markdown": str(tmp_path / "drill.md")}))
    result = run_dr_journal(finished)
    assert result["rto_seconds"] == 1000.0 and result["rpo_seconds"] == 25 * 60
    assert result["met"] == {"rto": True, "rpo": True} and result["status"] == "ok"
    assert result["objectives"] == {"rto": 1200.0, "rpo": 3600.0}
    assert result["recovery_point"]["source"] == "postgresql/auth"
    markdown = (tmp_path / "drill.md").read_text()
    assert "## Phases: ok" in markdown and "## Objectives: ok" in markdown
    assert "RTO 16m40s meets the objective of 20m" in markdown
    # The verdict is in the journal now: asking again returns it, writes nothing new, stores nothing twice.
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "finished"
    again = run_dr_journal(task(dict(state="finished", path=str(path), outputs={"markdown": str(tmp_path / "drill.md")})))
    assert again["changed"] is False and again["rto_seconds"] == 1000.0
    assert path.read_text().splitlines() == lines


def test_finished_fails_on_a_missed_objective_keeping_the_verdict(tmp_path: Path):
    path = tmp_path / "drill.jsonl"
    write_journal(path, [event("validate", "begin", reading(1)), event("validate", "end", reading(2))])
    with pytest.raises(RunbookError) as failed:
        run_dr_journal(task(dict(state="finished", path=str(path), objectives={"rpo": "10m"},
                                 data_times=[{"source": "pg", "newest_at": "2026-11-24T02:00:00Z"}])))
    assert "RPO 1h misses the objective of 10m" in failed.value.msg
    assert failed.value.details["rpo_seconds"] == 3600.0 and failed.value.details["met"]["rpo"] is False
    # Not judged again: a failed verdict is recorded too, and fails again.
    with pytest.raises(RunbookError):
        run_dr_journal(task(dict(state="finished", path=str(path))))
    kept = run_dr_journal(task(dict(state="finished", path=str(path), fail_on_missed=False)))
    assert kept["status"] == "critical"


def test_started_refuses_an_unfinished_journal_without_force_and_check_mode_writes_nothing(tmp_path: Path):
    path = tmp_path / "drill.jsonl"
    first = run_dr_journal(task(dict(state="started", path=str(path), platform="lab")))
    assert first["run_id"] and path.exists()
    with pytest.raises(RunbookError, match="has not finished"):
        run_dr_journal(task(dict(state="started", path=str(path), platform="lab")))
    before = path.read_text()
    run_dr_journal(task(dict(state="phase", path=str(path), phase="validate", event="begin"), check_mode=True))
    assert path.read_text() == before
    forced = run_dr_journal(task(dict(state="started", path=str(path), platform="lab", force=True, run_id="r-2")))
    assert forced["run_id"] == "r-2" and Journal.require(str(path)).start["run_id"] == "r-2"


def test_hostile_names_are_refused_before_anything_is_written(tmp_path: Path):
    for params in (dict(state="started", path=str(tmp_path / "j"), platform="../etc"),
                   dict(state="phase", path=str(tmp_path / "j"), phase="a b; rm", event="begin"),
                   dict(state="started", path=str(tmp_path / "j"), platform="lab", run_id="x/../y")):
        with pytest.raises(RunbookError):
            DrillOptions.from_params(validated("dr_journal", params))
    assert not (tmp_path / "j").exists()


def test_report_sections_split_phases_from_objectives():
    result = {"run_id": "r", "platform": "lab", "mode": "restore", "finished_at": "2026-11-24T03:30:00Z",
              "rto_seconds": None, "rpo_seconds": 60.0, "findings": [
                  {"severity": "ok", "check": "drill_phase", "object": "Phase/a", "message": "a took 1 s", "details": {}},
                  {"severity": "critical", "check": "drill_rto", "object": "Objective/rto", "message": "RTO not measured",
                   "details": {}}]}
    report = verdict_report(result)
    assert [(s.name, s.status) for s in report.opts.sections] == [("Phases", "ok"), ("Objectives", "critical")]
    text = render_markdown(report, PLACEHOLDER)
    assert text.startswith("# DR restore of lab (run r)") and "## Fix first" in text


def test_a_missing_data_time_templated_as_text_is_still_missing_never_now():
    opts = DrillOptions.from_params(validated("dr_journal", dict(state="finished", path="/j", data_times=[
        {"source": "a", "newest_at": "None"}, {"source": "b", "newest_at": ""}, {"source": "c"},
        {"source": "d", "newest_at": "2026-11-24T02:00:00Z", "method": "column"}])))
    assert [d.newest_at for d in opts.data_times[:3]] == [None, None, None]
    assert opts.data_times[3] == DataTime("d", parse_time("2026-11-24T02:00:00Z"), "column")
    with pytest.raises(RunbookError, match="named twice"):
        DrillOptions.from_params(validated("dr_journal", dict(state="finished", path="/j", data_times=[
            {"source": "a"}, {"source": "a"}])))
