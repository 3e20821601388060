#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: dr_journal
short_description: Measure a disaster-recovery drill or restore - phases, RTO and RPO - and keep its report in the backup repository
version_added: 0.3.0
description:
  - Keeps the journal of one drill or restore in a JSON-lines file on the host that runs the module, one call
    per moment - O(state=started) before anything is restored, O(state=phase) at each phase's begin and end,
    O(state=finished) to judge the run - and judges it against the platform's objectives.
  - Every record holds the UTC time and the reading of the system-wide monotonic clock (C(CLOCK_MONOTONIC)) with the
    kernel's boot id. Durations come from the monotonic clock, so separate tasks compare and no NTP step or manual
    clock change can bend them; an interval across a reboot (another boot id) falls back to UTC, with a warning and
    a V(warning) C(drill_clock) finding.
  - RTO (RV(rto_seconds)) runs from the O(state=started) record to the end of O(recovered_phase) - the moment the
    platform is proven back, not the end of the restore.
  - RPO (RV(rpo_seconds)) is the run's O(reference_time) minus the oldest of the sources' newest data times
    (O(data_times)) - the platform as a whole recovers only to its stalest store. A data time comes from the restored
    data itself (a canary written at backup time by M(runbook.ops.data_canary), or C(max()) of a declared column),
    never from the backup's own timestamp. A source without one leaves RPO unmeasured (a V(critical) finding).
  - Phases are read by their clocks, not by their order in the file, so tasks running in parallel may append in
    any order; a phase whose end was recorded before its begin, or that ended without a begin, is reported as such.
  - O(state=finished) writes the report as Markdown and JSON in the same style as the other reports of the
    collection (M(runbook.ops.findings_report)), with a section for the phases and one for the objectives, and with
    O(store=true) stores the journal, both renderings and the verdict as a backup of kind C(drill) in the repository,
    listed by M(runbook.ops.backup_repo_info) O(runbook.ops.backup_repo_info#module:kind=drill). Then it fails when a
    phase failed or an objective was missed or could not be measured (O(fail_on_missed)).
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.repository
attributes:
  check_mode:
    support: full
    description: Writes no journal record, no report file and nothing to the repository; the results say what would be recorded.
  diff_mode:
    support: none
    description: The journal only grows; the report files are described by RV(outputs).
options:
  state:
    description:
      - V(started) begins a run (a new journal); V(phase) records a phase event; V(finished) judges the run, writes the
        report, stores it with O(store=true) and appends the verdict to the journal.
      - O(state=finished) on a journal that is finished already returns the recorded verdict again (its report files
        rewritten if they changed or went missing), stores nothing twice, and fails again if the verdict failed.
    type: str
    required: true
    choices: [started, phase, finished]
  path:
    description:
      - The journal file on the host that runs the module. Its directory must exist.
      - Keep it out of a temporary directory that a reboot empties when the drill covers a host reboot.
    type: path
    required: true
  platform:
    description: The platform's name (the set name defaults to C(<platform>-drill)). Required with O(state=started).
    type: str
  mode:
    description: V(drill) restores into scratch targets; V(restore) restores for real. Recorded with O(state=started).
    type: str
    choices: [drill, restore]
    default: drill
  run_id:
    description: The run's id (letters, digits, dots, underscores, colons, plus and minus signs); default a UTC timestamp with a random suffix.
    type: str
  reference_time:
    description:
      - The moment RPO is measured from, ISO 8601 (V(2026-11-24T03:15:00Z)); default the start of the run.
      - For a restore after an incident, the incident's time.
    type: str
  force:
    description: With O(state=started), replace a journal whose run has not finished (a finished one is always replaced).
    type: bool
    default: false
  phase:
    description: The phase's name (letters, digits, C(_), C(.), C(-)). Required with O(state=phase).
    type: str
  event:
    description:
      - What happened to O(phase). Required with O(state=phase).
      - A phase begun again after its end counts as a retry; its duration runs from the first begin to the last end.
    type: str
    choices: [begin, end, failed]
  detail:
    description:
      - Facts recorded with the event as given (a backup id, a step's message). They go into the journal, the report
        and the repository, so they must hold no secret.
    type: dict
  data_times:
    description: With O(state=finished), the newest data time of every restored source.
    type: list
    elements: dict
    default: []
    suboptions:
      source:
        description: What the time was read from (V(postgresql/auth), V(redis/sessions)); unique in the list.
        type: str
        required: true
      newest_at:
        description: The newest data time found in the restored data (ISO 8601); empty when it could not be read.
        type: str
      method:
        description: V(canary) (M(runbook.ops.data_canary) read back) or V(column) (C(max()) of a declared column).
        type: str
        choices: [canary, column]
        default: canary
  objectives:
    description: With O(state=finished), the platform's objectives as durations (V(45m), V(4h)); an objective left out is reported, not judged.
    type: dict
    suboptions:
      rto:
        description: Recovery time objective.
        type: str
      rpo:
        description: Recovery point objective.
        type: str
  recovered_phase:
    description: The phase whose successful end is the moment of recovery (RTO's end).
    type: str
    default: validate
  outputs:
    description: With O(state=finished), where to write the report; each file is rewritten only when its content changes.
    type: dict
    suboptions:
      markdown:
        description: The Markdown report (its directory must exist).
        type: path
      json:
        description: The JSON report, every finding with its details.
        type: path
  store:
    description: With O(state=finished), store the journal, the report and the verdict in the repository as a backup of kind C(drill).
    type: bool
    default: false
  set:
    description: The set the drill is stored under; default C(<platform>-drill).
    type: str
  encryption_recipients:
    description:
      - age recipients (C(age1...)) the stored drill is encrypted to; empty stores it unencrypted.
      - A drill holds timings and names, no data, but O(detail) values are stored as given.
    type: list
    elements: str
    default: []
  fail_on_missed:
    description:
      - With O(state=finished), fail (after writing and storing the report) when the verdict is V(critical) - a phase
        failed or never ended, an objective was missed, or RTO or RPO could not be measured.
      - V(false) returns the same verdict without failing.
    type: bool
    default: true
notes:
  - Requires C(boto3) for S3 repositories.
  - The journal is appended under an exclusive lock, so phases recorded by tasks running in parallel never interleave.
seealso:
  - module: runbook.ops.data_canary
  - module: runbook.ops.backup_repo_info
  - module: runbook.ops.findings_report
"""

EXAMPLES = r"""
- name: Start the measurement before anything is restored
  runbook.ops.dr_journal:
    state: started
    path: /var/lib/runbook/drill-personapass.jsonl
    platform: personapass
    force: true
  register: drill

- name: Record the data restore
  runbook.ops.dr_journal:
    state: phase
    path: /var/lib/runbook/drill-personapass.jsonl
    phase: restore_data
    event: begin

# ... restore ...

- name: Record the end of the data restore
  runbook.ops.dr_journal:
    state: phase
    path: /var/lib/runbook/drill-personapass.jsonl
    phase: restore_data
    event: end
    detail:
      backup_id: 20261124T031500.042Z-3fa91c

- name: Read the canary back from the restored database
  runbook.ops.data_canary:
    service: postgresql
    state: read
    db: personapass_drill
  register: canary

- name: Judge the drill, write its report and keep it in the repository
  runbook.ops.dr_journal:
    state: finished
    path: /var/lib/runbook/drill-personapass.jsonl
    data_times:
      - source: postgresql/personapass
        newest_at: "{{ canary.written_at }}"
        method: canary
    objectives:
      rto: 4h
      rpo: 1h
    outputs:
      markdown: /var/lib/runbook/reports/personapass-drill.md
      json: /var/lib/runbook/reports/personapass-drill.json
    store: true
    repository: s3://platform-backups/runbook
"""

RETURN = r"""
changed:
  description: Whether a record, a report file or a stored drill was written (or would be, in check mode).
  returned: always
  type: bool
  sample: true
msg:
  description: What was recorded, or the verdict with RTO and RPO beside their objectives.
  returned: always
  type: str
  sample: "DR drill of personapass is ok: RTO 18m (objective 4h, met), RPO 1h2m (objective 2h, met)"
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.012
run_id:
  description: The run's id.
  returned: success
  type: str
  sample: 20261124T031500Z-3fa91c
started_at:
  description: When the run started (UTC, ISO 8601).
  returned: when O(state=started) or O(state=finished)
  type: str
  sample: "2026-11-24T03:15:00Z"
reference_time:
  description: The moment RPO is measured from (UTC, ISO 8601).
  returned: when O(state=started) or O(state=finished)
  type: str
  sample: "2026-11-24T03:15:00Z"
boot_id:
  description: The kernel's boot id the run started in (null where the system has none).
  returned: when O(state=started)
  type: str
  sample: 0f3c2a8e-1b7d-4f6a-9a51-2c8e7d1b4a90
path:
  description: The journal file.
  returned: when O(state=started)
  type: str
  sample: /var/lib/runbook/drill-personapass.jsonl
phase:
  description: The phase recorded.
  returned: when O(state=phase)
  type: str
  sample: restore_data
event:
  description: The event recorded.
  returned: when O(state=phase)
  type: str
  sample: end
recorded_at:
  description: When the event was recorded (UTC, ISO 8601).
  returned: when O(state=phase)
  type: str
  sample: "2026-11-24T03:27:41Z"
elapsed_seconds:
  description: Seconds since the run started (monotonic clock).
  returned: when O(state=phase)
  type: float
  sample: 761.204
phase_seconds:
  description: Seconds from the phase's first begin to this event; null when its begin was never recorded.
  returned: when O(state=phase) and O(event) is V(end) or V(failed)
  type: float
  sample: 312.871
platform:
  description: The platform.
  returned: when O(state=finished)
  type: str
  sample: personapass
mode:
  description: V(drill) or V(restore).
  returned: when O(state=finished)
  type: str
  sample: drill
set:
  description: The set the drill is (or would be) stored under.
  returned: when O(state=finished)
  type: str
  sample: personapass-drill
finished_at:
  description: When the run was judged (UTC, ISO 8601); also the generation time of the report.
  returned: when O(state=finished)
  type: str
  sample: "2026-11-24T03:33:02Z"
recovered_phase:
  description: The phase whose end is the moment of recovery.
  returned: when O(state=finished)
  type: str
  sample: validate
rto_seconds:
  description: Seconds from the start of the run to the end of O(recovered_phase); null when it did not end successfully.
  returned: when O(state=finished)
  type: float
  sample: 1081.5
rpo_seconds:
  description:
    - O(reference_time) minus the oldest of the sources' newest data times; null when a source has no data time.
    - Negative when the data is newer than the reference time (reported with a warning finding).
  returned: when O(state=finished)
  type: float
  sample: 3724.0
objectives:
  description: The objectives in seconds (null when not given).
  returned: when O(state=finished)
  type: dict
  sample: {rto: 14400.0, rpo: 3600.0}
  contains:
    rto:
      description: Recovery time objective in seconds.
      type: float
    rpo:
      description: Recovery point objective in seconds.
      type: float
met:
  description: Whether each objective was met; null when it was not given or not measured.
  returned: when O(state=finished)
  type: dict
  sample: {rto: true, rpo: false}
  contains:
    rto:
      description: RTO met.
      type: bool
    rpo:
      description: RPO met.
      type: bool
recovery_point:
  description: The source whose data time sets RPO (the stalest), null when RPO is not measured.
  returned: when O(state=finished)
  type: dict
  sample: {source: redis/sessions, newest_at: "2026-11-24T02:12:56Z", method: canary}
  contains:
    source:
      description: The source.
      type: str
    newest_at:
      description: Its newest data time (UTC, ISO 8601).
      type: str
    method:
      description: V(canary) or V(column).
      type: str
phases:
  description: Every phase, in the order they began.
  returned: when O(state=finished)
  type: list
  elements: dict
  contains:
    name:
      description: The phase.
      type: str
      sample: restore_data
    started_at:
      description: Its first begin (UTC, ISO 8601); null when never recorded.
      type: str
      sample: "2026-11-24T03:16:10Z"
    ended_at:
      description: Its last end or failure (UTC, ISO 8601); null while it runs.
      type: str
      sample: "2026-11-24T03:21:23Z"
    seconds:
      description: Its duration by the monotonic clock; null when its begin or end is missing or out of order.
      type: float
      sample: 312.871
    status:
      description: V(ok), V(failed), V(running) (never ended), V(no_begin) or V(out_of_order).
      type: str
      sample: ok
status:
  description: The worst severity of the verdict's findings.
  returned: when O(state=finished)
  type: str
  sample: ok
summary:
  description: How many findings of each severity.
  returned: when O(state=finished)
  type: dict
  sample: {ok: 7, info: 0, warning: 0, unknown: 0, critical: 0}
findings:
  description:
    - One C(drill_phase) finding per phase, C(drill_rto) and C(drill_rpo), one C(drill_data_time) per source and
      C(drill_clock) when an interval crossed a reboot.
  returned: when O(state=finished)
  type: list
  elements: dict
  contains:
    severity:
      description: V(ok), V(info), V(warning), V(unknown) or V(critical).
      type: str
      sample: critical
    check:
      description: The check's id.
      type: str
      sample: drill_rpo
    object:
      description: What it is about.
      type: str
      sample: Objective/rpo
    message:
      description: What was found.
      type: str
      sample: RPO 1h2m misses the objective of 1h
    details:
      description: The measures behind it.
      type: dict
      sample: {seconds: 3724.0, objective_seconds: 3600.0, source: redis/sessions}
stored:
  description: Where the drill was stored; null without O(store=true) or in check mode.
  returned: when O(state=finished)
  type: dict
  sample: {kind: drill, set: personapass-drill, backup_id: 20261124T033302.114Z-0ac1e9, repository: s3://platform-backups/runbook}
  contains:
    kind:
      description: Always V(drill).
      type: str
    set:
      description: The set.
      type: str
    backup_id:
      description: The stored drill's id.
      type: str
    repository:
      description: The repository URL.
      type: str
outputs:
  description: The report files asked for, keyed by format, each with whether it changed.
  returned: when O(state=finished)
  type: dict
  sample: {markdown: {path: /var/lib/runbook/reports/personapass-drill.md, changed: true}}
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._drill import (
    METHODS, MODES, PHASE_EVENTS, STATES, DrillOptions, run_dr_journal)
from ansible_collections.runbook.ops.plugins.module_utils._repository import repository_argspec


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = repository_argspec()
    spec.update(
        state=dict(type="str", required=True, choices=list(STATES)),
        path=dict(type="path", required=True),
        platform=dict(type="str"),
        mode=dict(type="str", choices=list(MODES), default="drill"),
        run_id=dict(type="str"),
        reference_time=dict(type="str"),
        force=dict(type="bool", default=False),
        phase=dict(type="str"),
        event=dict(type="str", choices=list(PHASE_EVENTS)),
        detail=dict(type="dict"),
        data_times=dict(type="list", elements="dict", default=[], options=dict(
            source=dict(type="str", required=True),
            newest_at=dict(type="str"),
            method=dict(type="str", choices=list(METHODS), default="canary"),
        )),
        objectives=dict(type="dict", options=dict(rto=dict(type="str"), rpo=dict(type="str"))),
        recovered_phase=dict(type="str", default="validate"),
        outputs=dict(type="dict", options=dict(markdown=dict(type="path"), json=dict(type="path"))),
        store=dict(type="bool", default=False),
        set=dict(type="str"),
        encryption_recipients=dict(type="list", elements="str", default=[]),
        fail_on_missed=dict(type="bool", default=True),
    )
    return dict(
        argument_spec=spec,
        required_if=[("state", "started", ("platform",)), ("state", "phase", ("phase", "event"))],
        supports_check_mode=True,
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, DrillOptions.from_params, run_dr_journal)


if __name__ == "__main__":
    main()
