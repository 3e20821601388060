# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``dr_journal``: the measured timeline of one disaster-recovery drill or restore, and its verdict.

A journal is a JSON-lines file on the host that runs the module: a ``started`` record, one record per
phase event (``begin``, ``end``, ``failed``) and, once judged and stored, a ``finished`` record. Every
record carries both clocks of the moment it was written: UTC for people, and ``CLOCK_MONOTONIC`` with
the kernel's ``boot_id`` for arithmetic. The monotonic clock is system-wide, so readings taken by
separate module processes on one host compare, and it never jumps with NTP or a manual clock change.
It restarts at a reboot: a reading from another boot is never subtracted from this boot's; such an
interval falls back to UTC and is reported as such.

The verdict follows two rules that home-grown drills often get wrong:

* RTO runs from the ``started`` record (written before anything is restored) to the end of the
  phase that proves recovery (``recovered_phase``, ``validate`` by default), never from the end of
  the restore.
* RPO is the reference time (the drill's start, or the incident) minus the newest *data* time of the
  stalest source (a canary written at backup time, or ``max()`` of a declared column), never the
  backup's own timestamp. A source without a data time leaves RPO unmeasured: a ``critical``
  finding, never a number made up from something else.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import io
import json
import os
import re
import secrets
import socket
import tempfile
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, parse_time, utcnow)
from ansible_collections.runbook.ops.plugins.module_utils._findings import Finding, counts_text, finding, summarize
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    backup_id as check_run_id, duration, local_path, no_control, path_segment, shown)
from ansible_collections.runbook.ops.plugins.module_utils._report import (
    PLACEHOLDER, RENDERERS, Metric, Report, ReportOptions, Section, Stamp, Target, output, with_time)
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

KIND = "drill"
FORMAT = "runbook-drill-v1"
JOURNAL_VERSION = 1
STATES = ("started", "phase", "finished")
MODES = ("drill", "restore")
PHASE_EVENTS = ("begin", "end", "failed")
METHODS = ("canary", "column")
OUTPUT_FORMATS = ("markdown", "json")
FILE_MODE = 0o640
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_PHASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
Json = t.Dict[str, t.Any]


# --------------------------------------------------------------------------- clocks

def read_boot_id(path: str = BOOT_ID_FILE) -> t.Optional[str]:
    """The kernel's id of this boot (Linux); None where there is none to read."""
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class Reading:
    """Both clocks at one moment: UTC, and the monotonic clock of the boot it was read in."""

    utc: datetime.datetime
    monotonic: float
    boot_id: t.Optional[str]

    @classmethod
    def now(cls) -> "Reading":
        return cls(utc=utcnow(), monotonic=time.monotonic(), boot_id=read_boot_id())

    def record(self) -> Json:
        return {"at": self.utc.isoformat().replace("+00:00", "Z"), "monotonic": self.monotonic, "boot_id": self.boot_id}

    @classmethod
    def of(cls, record: t.Mapping[str, t.Any], where: str) -> "Reading":
        try:
            return cls(utc=parse_time(str(record["at"]), where), monotonic=float(record["monotonic"]),
                       boot_id=record.get("boot_id") or None)
        except (KeyError, TypeError, ValueError):
            raise RunbookError("%s has no readable clock (at, monotonic, boot_id)" % where)


def interval(start: Reading, end: Reading) -> t.Tuple[float, bool]:
    """Seconds from ``start`` to ``end`` and whether the monotonic clock measured them. Across a
    reboot (another boot id, or a monotonic reading that went backwards) only UTC can."""
    same_boot = start.boot_id == end.boot_id
    if same_boot and end.monotonic >= start.monotonic:
        return end.monotonic - start.monotonic, True
    return (end.utc - start.utc).total_seconds(), False


def new_run_id(now: datetime.datetime) -> str:
    return "%sZ-%s" % (now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S"), secrets.token_hex(3))


# --------------------------------------------------------------------------- the journal file

@dataclasses.dataclass
class Journal:
    """The records of one journal file, in file order."""

    path: str
    records: t.List[Json]
    raw: bytes = b""

    @classmethod
    def load(cls, path: str) -> t.Optional["Journal"]:
        """The journal at ``path``; None when there is no file."""
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RunbookError("cannot read the journal %s: %s" % (path, exc.strerror or exc))
        return cls(path, parse_records(raw, path), raw)

    @classmethod
    def require(cls, path: str) -> "Journal":
        journal = cls.load(path)
        if journal is None:
            raise RunbookError("journal %s does not exist: start the run first (state=started)" % path)
        return journal

    @property
    def start(self) -> Json:
        return self.records[0]

    @property
    def start_reading(self) -> Reading:
        return Reading.of(self.start["clock"], "journal %s line 1" % self.path)

    @property
    def finished(self) -> t.Optional[Json]:
        return next((r for r in self.records if r.get("type") == "finished"), None)

    def phase_records(self) -> t.List[Json]:
        return [r for r in self.records if r.get("type") == "phase"]


def parse_records(raw: bytes, path: str) -> t.List[Json]:
    records = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise RunbookError("journal %s line %d is not JSON (a write was cut short?); start a new run "
                               "with force=true" % (path, number))
        if not isinstance(record, dict) or record.get("type") not in ("started", "phase", "finished"):
            raise RunbookError("journal %s line %d is not a journal record" % (path, number))
        records.append(record)
    if not records or records[0].get("type") != "started" or any(r["type"] == "started" for r in records[1:]):
        raise RunbookError("journal %s does not begin with exactly one started record; it is not a runbook.ops "
                           "journal (start a new run with force=true)" % path)
    return records


def _line(record: Json) -> bytes:
    # Key order kept: a verdict read back renders the same report as when it was judged.
    return (json.dumps(record, default=str) + "\n").encode("utf-8")


def create_journal(path: str, record: Json) -> None:
    """A new journal holding ``record``, replacing any old file at once (rename)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise RunbookError("cannot start the journal %s: directory %s does not exist" % (path, directory))
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            stream.write(_line(record))
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except OSError as exc:
        raise RunbookError("cannot write the journal %s: %s" % (path, exc.strerror or exc))


def append_record(path: str, record: Json) -> None:
    """One line appended under an exclusive lock: parallel tasks (async phases) never interleave."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise RunbookError("cannot append to the journal %s: %s" % (path, exc.strerror or exc))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _line(record))
        os.fsync(fd)
    except OSError as exc:
        raise RunbookError("cannot append to the journal %s: %s" % (path, exc.strerror or exc))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- options

@dataclasses.dataclass(frozen=True)
class DataTime:
    """The newest data time one restored source holds (None: it could not be read)."""

    source: str
    newest_at: t.Optional[datetime.datetime]
    method: str


@dataclasses.dataclass(frozen=True)
class DrillOptions:
    """What one call of ``dr_journal`` records or judges (each state reads its own fields)."""

    state: str
    path: str
    platform: t.Optional[str]
    mode: str
    run_id: t.Optional[str]
    reference_time: t.Optional[datetime.datetime]
    force: bool
    phase: t.Optional[str]
    event: t.Optional[str]
    detail: t.Dict[str, t.Any]
    data_times: t.Tuple[DataTime, ...]
    rto_objective: t.Optional[float]
    rpo_objective: t.Optional[float]
    recovered_phase: str
    outputs: t.Tuple[t.Tuple[str, str], ...]
    store: bool
    set: t.Optional[str]
    encryption_recipients: t.List[str]
    fail_on_missed: bool

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "DrillOptions":
        path = os.path.abspath(local_path("path", params["path"]))
        if params["platform"] is not None:
            path_segment("platform", params["platform"])
        if params["run_id"]:
            check_run_id(params["run_id"], "run_id")
        if params["set"]:
            path_segment("set", params["set"])
        for option in ("phase", "recovered_phase"):
            if params[option] is not None and not _PHASE_NAME.match(no_control(option, params[option])):
                raise RunbookError("%s %s is not a phase name (letters, digits, '_', '.', '-'; at most 100)"
                                   % (option, shown(params[option])))
        objectives = params["objectives"] or {}
        reference = params["reference_time"]
        return options_from(
            cls, params, path=path,
            reference_time=parse_time(reference, "reference_time") if reference else None,
            detail=dict(params["detail"] or {}),
            data_times=tuple(data_times_from(params["data_times"])),
            rto_objective=_objective("objectives.rto", objectives.get("rto")),
            rpo_objective=_objective("objectives.rpo", objectives.get("rpo")),
            outputs=outputs_from(params["outputs"] or {}))


def _objective(what: str, value: t.Any) -> t.Optional[float]:
    if value is None or value == "":
        return None
    return duration(what, value, above=True)


def data_times_from(given: t.Sequence[t.Mapping[str, t.Any]]) -> t.Iterator[DataTime]:
    seen: t.Set[str] = set()
    for index, item in enumerate(given):
        where = "data_times[%d]" % index
        source = no_control(where + ".source", item["source"])
        if not source or source in seen:
            raise RunbookError("%s.source %s is empty or named twice" % (where, shown(source)))
        seen.add(source)
        newest = item["newest_at"]
        # A template of a missing value may arrive as the text "None": still no data time, never "now".
        missing = newest is None or str(newest).strip() in ("", "None", "null")
        at = None if missing else parse_time(newest, where + ".newest_at")
        yield DataTime(source=source, newest_at=at, method=item["method"])


def outputs_from(given: t.Mapping[str, t.Any]) -> t.Tuple[t.Tuple[str, str], ...]:
    outputs = []
    for fmt in OUTPUT_FORMATS:
        if given.get(fmt):
            outputs.append((fmt, os.path.abspath(local_path("outputs.%s" % fmt, given[fmt]))))
    if len(outputs) == 2 and outputs[0][1] == outputs[1][1]:
        raise RunbookError("outputs.markdown and outputs.json name the same file %s" % outputs[0][1])
    return tuple(outputs)


# --------------------------------------------------------------------------- the timeline (pure)

@dataclasses.dataclass
class PhaseSpan:
    """One phase as its events tell it: the first begin, the last end or failure, and its status
    (``ok``, ``failed``, ``running``: begun and never ended, ``no_begin``: ended without a begin,
    ``out_of_order``: its end was recorded before its begin)."""

    name: str
    begin: t.Optional[Reading] = None
    end: t.Optional[Reading] = None
    status: str = "running"
    attempts: int = 0
    detail: Json = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Timeline:
    start: Reading
    phases: t.List[PhaseSpan]
    utc_fallback: bool  # an interval crossed a reboot and was measured in UTC

    def offset(self, reading: Reading) -> float:
        seconds, monotonic = interval(self.start, reading)
        if not monotonic:
            self.utc_fallback = True
        return seconds

    def phase(self, name: str) -> t.Optional[PhaseSpan]:
        return next((span for span in self.phases if span.name == name), None)

    def seconds(self, span: PhaseSpan) -> t.Optional[float]:
        if span.begin is None or span.end is None or span.status in ("no_begin", "out_of_order"):
            return None
        seconds, monotonic = interval(span.begin, span.end)
        if not monotonic:
            self.utc_fallback = True
        return round(seconds, 3)


def timeline(start: Reading, records: t.Sequence[Json]) -> Timeline:
    """The phases of a journal, by their clocks rather than by file order (parallel tasks append in
    any order); each phase's events are read in time order too."""
    line = Timeline(start, [], False)
    events = []
    for number, record in enumerate(records):
        reading = Reading.of(record.get("clock") or {}, "phase record %d" % (number + 1))
        events.append((line.offset(reading), number, record, reading))
    events.sort(key=lambda item: (item[0], item[1]))
    spans: t.Dict[str, PhaseSpan] = {}
    for _offset, _number, record, reading in events:
        span = spans.setdefault(str(record["phase"]), PhaseSpan(str(record["phase"])))
        if record["event"] == "begin":
            span.attempts += 1
            if span.begin is None:
                span.begin = reading
                if span.end is not None:
                    # Its end was recorded (by the clock) before it began: a journal written wrongly.
                    span.status = "out_of_order"
            elif span.end is not None:
                span.status, span.end = "running", None  # begun again after an end: a retry still running
            continue
        span.end, span.status = reading, "ok" if record["event"] == "end" else "failed"
        if record.get("detail"):
            span.detail = dict(record["detail"])
    for span in spans.values():
        if span.begin is None:
            span.status = "no_begin"
    line.phases = sorted(spans.values(), key=lambda s: line.offset(s.begin or s.end or start))
    return line


def phase_entry(line: Timeline, span: PhaseSpan) -> Json:
    return {"name": span.name, "started_at": isoformat(span.begin.utc) if span.begin else None,
            "ended_at": isoformat(span.end.utc) if span.end else None,
            "seconds": line.seconds(span), "status": span.status}


def phase_findings(line: Timeline, entries: t.Sequence[Json]) -> t.List[Finding]:
    findings = []
    for entry in entries:
        obj = "Phase/%s" % entry["name"]
        status, seconds = entry["status"], entry["seconds"]
        details = {k: entry[k] for k in ("started_at", "ended_at", "seconds", "status")}
        if status == "ok":
            findings.append(finding("ok", "drill_phase", obj, "%s took %s" % (entry["name"], _human(seconds)), details))
        elif status == "failed":
            findings.append(finding("critical", "drill_phase", obj, "%s failed after %s" % (entry["name"], _human(seconds)),
                                    dict(details, detail=(line.phase(entry["name"]) or PhaseSpan("")).detail)))
        elif status == "running":
            findings.append(finding("critical", "drill_phase", obj, "%s began at %s and never ended"
                                    % (entry["name"], entry["started_at"]), details))
        elif status == "no_begin":
            findings.append(finding("warning", "drill_phase", obj, "%s ended at %s but its begin was never recorded: "
                                    "its duration is unknown" % (entry["name"], entry["ended_at"]), details))
        else:
            findings.append(finding("warning", "drill_phase", obj, "%s was recorded out of order: its end (%s) is "
                                    "before its begin (%s)" % (entry["name"], entry["ended_at"], entry["started_at"]),
                                    details))
    return findings


def _human(seconds: t.Optional[float]) -> str:
    if seconds is None:
        return "an unknown time"
    if abs(seconds) < 120:
        return "%.1f s" % seconds
    hours, rest = divmod(int(round(abs(seconds))), 3600)
    minutes, secs = divmod(rest, 60)
    text = "".join("%d%s" % (value, unit) for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value)
    return text if seconds >= 0 else "-" + text


# --------------------------------------------------------------------------- the verdict (pure)

@dataclasses.dataclass(frozen=True)
class Measures:
    rto_seconds: t.Optional[float]
    rto_why: str  # why RTO is unmeasured
    rpo_seconds: t.Optional[float]
    rpo_why: str
    recovery_point: t.Optional[DataTime]


def measure_rto(line: Timeline, recovered_phase: str) -> t.Tuple[t.Optional[float], str]:
    span = line.phase(recovered_phase)
    if span is None:
        return None, "phase %s was never recorded" % recovered_phase
    if span.status != "ok" or span.end is None:
        return None, "phase %s did not end successfully (status %s)" % (recovered_phase, span.status)
    return round(line.offset(span.end), 3), ""


def measure_rpo(reference: datetime.datetime, data_times: t.Sequence[DataTime]
                ) -> t.Tuple[t.Optional[float], str, t.Optional[DataTime]]:
    """Reference time minus the OLDEST of the sources' newest data times: the platform as a whole
    recovers only to its stalest store."""
    if not data_times:
        return None, "no data time was given (data_times is empty)", None
    missing = [d.source for d in data_times if d.newest_at is None]
    if missing:
        return None, "no data time for %s" % ", ".join(missing), None
    oldest = min(data_times, key=lambda d: t.cast(datetime.datetime, d.newest_at))
    seconds = (reference - t.cast(datetime.datetime, oldest.newest_at)).total_seconds()
    return round(seconds, 3), "", oldest


def objective_finding(name: str, measured: t.Optional[float], why: str, objective: t.Optional[float],
                      details: Json) -> t.Tuple[Finding, t.Optional[bool]]:
    obj = "Objective/%s" % name
    label = name.upper()
    details = dict(details, seconds=measured, objective_seconds=objective)
    if measured is None:
        return finding("critical", "drill_%s" % name, obj, "%s not measured: %s" % (label, why), details), None
    text = "%s %s" % (label, _human(measured))
    if objective is None:
        return finding("info", "drill_%s" % name, obj, "%s (no objective given)" % text, details), None
    if measured > objective:
        return finding("critical", "drill_%s" % name, obj, "%s misses the objective of %s"
                       % (text, _human(objective)), details), False
    return finding("ok", "drill_%s" % name, obj, "%s meets the objective of %s" % (text, _human(objective)), details), True


def data_time_findings(reference: datetime.datetime, data_times: t.Sequence[DataTime]) -> t.List[Finding]:
    findings = []
    for item in data_times:
        obj = "DataSource/%s" % item.source
        if item.newest_at is None:
            findings.append(finding("critical", "drill_data_time", obj, "no data time could be read from %s (%s)"
                                    % (item.source, item.method),
                                    {"method": item.method, "newest_at": None}))
            continue
        age = (reference - item.newest_at).total_seconds()
        details = {"method": item.method, "newest_at": isoformat(item.newest_at), "age_seconds": round(age, 3)}
        if age < 0:
            findings.append(finding("warning", "drill_data_time", obj, "newest data (%s, %s) is %s after the reference "
                                    "time: data written after it, or clocks that disagree"
                                    % (isoformat(item.newest_at), item.method, _human(-age)), details))
        else:
            findings.append(finding("ok", "drill_data_time", obj, "newest data %s (%s), %s before the reference time"
                                    % (isoformat(item.newest_at), item.method, _human(age)), details))
    return findings


# --------------------------------------------------------------------------- states

def run_dr_journal(task: Task[DrillOptions]) -> Result:
    return {"started": start_run, "phase": record_phase, "finished": finish_run}[task.options.state](task)


def start_run(task: Task[DrillOptions]) -> Result:
    opts = task.options
    platform = t.cast(str, opts.platform)  # required with state=started by the argument spec
    existing = Journal.load(opts.path)
    if existing is not None and existing.finished is None and not opts.force:
        raise RunbookError("journal %s holds run %s, which has not finished; finish it (state=finished) or start "
                           "over with force=true" % (opts.path, existing.start.get("run_id")))
    now = Reading.now()
    run_id = opts.run_id or new_run_id(now.utc)
    reference = opts.reference_time or now.utc
    record = {"type": "started", "version": JOURNAL_VERSION, "run_id": run_id, "platform": platform,
              "mode": opts.mode, "reference_time": isoformat(reference), "host": socket.gethostname(),
              "clock": now.record()}
    if not task.check_mode:
        create_journal(opts.path, record)
    return {"changed": True, "run_id": run_id, "started_at": isoformat(now.utc), "reference_time": isoformat(reference),
            "boot_id": now.boot_id, "path": opts.path,
            "msg": "%s %s of %s %s at %s (journal %s)" % (
                "would start" if task.check_mode else "started", opts.mode, platform, run_id,
                isoformat(now.utc), opts.path)}


def record_phase(task: Task[DrillOptions]) -> Result:
    opts = task.options
    phase, event = t.cast(str, opts.phase), t.cast(str, opts.event)
    journal = Journal.require(opts.path)
    if journal.finished is not None:
        raise RunbookError("journal %s is finished (run %s): start a new run before recording phases"
                           % (opts.path, journal.start.get("run_id")))
    now = Reading.now()
    record = {"type": "phase", "phase": phase, "event": event, "detail": opts.detail, "clock": now.record()}
    line = timeline(journal.start_reading, journal.phase_records() + [record])
    elapsed = line.offset(now)
    result: Result = {"changed": True, "run_id": journal.start.get("run_id"), "phase": phase, "event": event,
                      "recorded_at": isoformat(now.utc), "elapsed_seconds": round(elapsed, 3)}
    span = t.cast(PhaseSpan, line.phase(phase))
    if event != "begin":
        result["phase_seconds"] = line.seconds(span) if span.begin is not None else None
        if span.begin is None:
            task.warn("phase %s ended without a recorded begin: its duration is unknown" % phase)
    if line.utc_fallback:
        task.warn(REBOOT_WARNING)
    if not task.check_mode:
        append_record(opts.path, record)
    took = "" if result.get("phase_seconds") is None else " after %s" % _human(result["phase_seconds"])
    result["msg"] = "%s: %s %s%s, %s into run %s" % (
        "would record" if task.check_mode else "recorded", phase, {"begin": "began", "end": "ended",
                                                                   "failed": "failed"}[event],
        took, _human(elapsed), result["run_id"])
    return result


REBOOT_WARNING = ("the host rebooted during the run (its boot id changed): intervals across the reboot are "
                  "measured with the UTC clock, which NTP or a manual change may have moved")


def finish_run(task: Task[DrillOptions]) -> Result:
    opts = task.options
    journal = Journal.require(opts.path)
    recorded = journal.finished
    if recorded is not None:
        # Judged and stored already: the same verdict again, nothing stored twice.
        result = dict(recorded["result"])
        result["outputs"] = write_outputs(task, verdict_report(result))
        result["changed"] = any(item["changed"] for item in result["outputs"].values())
        return _verdict(task, result)
    result = judge(task, journal)
    report = verdict_report(result)
    result["outputs"] = write_outputs(task, report)
    result["stored"] = None
    if opts.store and not task.check_mode:
        result["stored"] = store(task, journal, result, report)
    if not task.check_mode:
        append_record(opts.path, {"type": "finished", "clock": Reading.now().record(),
                                  "result": {k: v for k, v in result.items() if k != "outputs"}})
    result["changed"] = True
    return _verdict(task, result)


def judge(task: Task[DrillOptions], journal: Journal) -> Result:
    """The measures, the phases and the findings of a journal (pure apart from the warning)."""
    opts = task.options
    start = journal.start
    line = timeline(journal.start_reading, journal.phase_records())
    reference = parse_time(start["reference_time"], "reference_time")
    phases = [phase_entry(line, span) for span in line.phases]
    rto, rto_why = measure_rto(line, opts.recovered_phase)
    rpo, rpo_why, point = measure_rpo(reference, opts.data_times)
    rto_finding, rto_met = objective_finding("rto", rto, rto_why, opts.rto_objective,
                                             {"recovered_phase": opts.recovered_phase})
    rpo_finding, rpo_met = objective_finding("rpo", rpo, rpo_why, opts.rpo_objective, {
        "reference_time": isoformat(reference),
        "source": point.source if point else None,
        "newest_at": isoformat(point.newest_at) if point and point.newest_at else None})
    objective_section = [rto_finding, rpo_finding] + data_time_findings(reference, opts.data_times)
    if line.utc_fallback:
        task.warn(REBOOT_WARNING)
        objective_section.append(finding("warning", "drill_clock", "Journal/%s" % start["run_id"], REBOOT_WARNING))
    phase_section = phase_findings(line, phases)
    status, summary = summarize(phase_section + objective_section)
    now = Reading.now()
    return {
        "run_id": start["run_id"], "platform": start["platform"], "mode": start["mode"],
        "set": opts.set or "%s-drill" % start["platform"],
        "reference_time": isoformat(reference), "started_at": isoformat(journal.start_reading.utc),
        "finished_at": isoformat(now.utc), "recovered_phase": opts.recovered_phase,
        "rto_seconds": rto, "rpo_seconds": rpo,
        "objectives": {"rto": opts.rto_objective, "rpo": opts.rpo_objective},
        "met": {"rto": rto_met, "rpo": rpo_met},
        "recovery_point": {"source": point.source, "newest_at": isoformat(t.cast(datetime.datetime, point.newest_at)),
                           "method": point.method} if point else None,
        "phases": phases,
        "status": status, "summary": summary,
        "findings": phase_section + objective_section,
    }


def _verdict(task: Task[DrillOptions], result: Result) -> Result:
    title = _title(result)
    measured = "RTO %s, RPO %s" % (_measure_text(result, "rto"), _measure_text(result, "rpo"))
    counts = counts_text(result["summary"])
    result["msg"] = "%s is %s: %s%s" % (title, result["status"], measured, "; " + counts if counts else "")
    if task.options.fail_on_missed and result["status"] == "critical":
        reasons = [f["message"] for f in result["findings"] if f["severity"] == "critical"]
        raise RunbookError.keeping("%s failed: %s (%s)%s" % (
            title, "; ".join(reasons[:3]) + ("; and %d more" % (len(reasons) - 3) if len(reasons) > 3 else ""),
            measured, "; stored as %s" % result["stored"]["backup_id"] if result.get("stored") else ""), result)
    return result


def _measure_text(result: Result, name: str) -> str:
    seconds = result["%s_seconds" % name]
    if seconds is None:
        return "not measured"
    objective = result["objectives"][name]
    if objective is None:
        return _human(seconds)
    return "%s (objective %s, %s)" % (_human(seconds), _human(objective), "met" if result["met"][name] else "missed")


def _title(result: Result) -> str:
    return "%s of %s" % ("DR drill" if result["mode"] == "drill" else "DR restore", result["platform"])


# --------------------------------------------------------------------------- report and storage

def verdict_report(result: Result) -> Report:
    """The report of a verdict, through the findings report's renderers: a section for the phases
    (in the order they ran) and one for the objectives and the data times behind RPO."""
    findings = list(result["findings"])
    metrics = [Metric(name="runbook_drill_%s_seconds" % name, help="%s measured by the last drill." % name.upper(),
                      labels=(), value=float(result["%s_seconds" % name]))
               for name in ("rto", "rpo") if result["%s_seconds" % name] is not None]
    opts = ReportOptions(
        title="%s (run %s)" % (_title(result), result["run_id"]), platform=result["platform"],
        job="dr_%s" % result["mode"],
        sections=(Section("Phases", "phases", tuple(f for f in findings if f["check"] == "drill_phase")),
                  Section("Objectives", "objectives", tuple(f for f in findings if f["check"] != "drill_phase"))),
        include_ok=True, outputs=(), junit_failure_level="warning", metrics=tuple(metrics), mode=FILE_MODE,
        now=parse_time(result["finished_at"], "finished_at"))
    return Report.of(opts)


def write_outputs(task: Task[DrillOptions], report: Report) -> t.Dict[str, Json]:
    stamp = Stamp.at(report.opts.now)
    files = {}
    for fmt, path in task.options.outputs:
        written = output(Target(path, FILE_MODE, task.check_mode), RENDERERS[fmt](report, PLACEHOLDER), stamp)
        files[fmt] = {"path": path, "changed": written.changed}
    return files


def rendered(report: Report, fmt: str) -> bytes:
    return with_time(RENDERERS[fmt](report, PLACEHOLDER), Stamp.at(report.opts.now)).encode("utf-8")


# What the manifest of a stored drill tells without reading its objects.
DRILL_FACTS = ("run_id", "mode", "reference_time", "started_at", "finished_at", "rto_seconds", "rpo_seconds",
               "objectives", "met", "status")


def store(task: Task[DrillOptions], journal: Journal, result: Result, report: Report) -> Json:
    """The journal, both renderings and the verdict as one backup of kind ``drill``."""
    opts = task.options
    repo = task.client(Repository.from_options)
    labels = {"run_id": result["run_id"], "platform": result["platform"], "mode": result["mode"],
              "status": result["status"]}
    for name in ("rto", "rpo"):
        if result["%s_seconds" % name] is not None:
            labels["%s_seconds" % name] = str(result["%s_seconds" % name])
    objects = (("journal.jsonl", journal.raw), ("report.md", rendered(report, "markdown")),
               ("report.json", rendered(report, "json")),
               ("verdict.json", json.dumps(result, indent=2, sort_keys=True, default=str).encode("utf-8")))
    with repo.new_backup(KIND, result["set"], labels) as backup:
        for name, data in objects:
            backup.add_object(name, io.BytesIO(data), compression="none", recipients=list(opts.encryption_recipients),
                              size_hint=len(data))
        manifest = backup.commit(
            source={"platform": result["platform"], "host": journal.start.get("host"), "journal": opts.path},
            fmt=FORMAT, compression={"algorithm": "none", "level": None, "threads": 0},
            extra={"drill": {k: result[k] for k in DRILL_FACTS}})
    return {"kind": KIND, "set": result["set"], "backup_id": manifest["id"], "repository": repo.url}
