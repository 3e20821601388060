#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: findings_report
short_description: Write one findings report from several runbook.ops results, as Markdown, HTML, JSON, JUnit XML and a Prometheus textfile
version_added: 0.2.0
description:
  - Gathers the results of several tasks (any runbook.ops module result, or findings a role builds
    itself) into one report with one section per source, judged through the collection's one severity
    ranking (V(ok) < V(info) < V(warning) < V(unknown) < V(critical)).
  - The report opens with what a reader needs first (the overall status, the counts per severity and
    the findings to fix first, critical then unknown then warning, at most ten), then one section per source.
  - A source that could not run never reads as V(ok). A failed result whose findings do not explain the
    failure (none at V(warning) or worse) adds a V(critical) C(<source>.failed) finding carrying the
    result's message; a skipped result adds an V(info) C(<source>.skipped) finding saying why; a successful
    result without findings adds an V(ok) C(<source>.done) finding with its message; an empty result adds
    an V(unknown) C(<source>.no_result) finding.
  - A registered loop (a result with C(results)) is read item by item.
  - Each file is rewritten only when its content, the generation time aside, changes, and always
    atomically (a temporary file in the same directory renamed over the old one), so a web server or
    node_exporter never reads half a file.
  - The Prometheus textfile is refreshed on every run that is not in check mode, so that
    C(runbook_last_run_timestamp_seconds) and ages are current; it counts as changed only when something
    else in it changed.
  - Formats, metric names and the example alert rules are described in C(docs/reports.md) of the collection.
author:
  - runbook.ops maintainers (@runbook-ops)
attributes:
  check_mode:
    support: full
    description: Writes nothing; RV(changed) and RV(files) say which files would be rewritten.
  diff_mode:
    support: partial
    description: Shows the Markdown and JSON files before and after; the HTML, JUnit and Prometheus files are not shown.
options:
  title:
    description: "The report's title, for example C(Daily check: rust-security)."
    type: str
    required: true
  platform:
    description: The platform the report is about; shown in the header and set as the C(platform) label of every metric.
    type: str
    default: ""
  job:
    description:
      - What produced the report (V(daily_check), V(backup), V(maintenance_window)...).
      - Shown in the header, prefixed to every JUnit test suite name, and set as the C(runbook_job) label of every
        metric (not C(job), which Prometheus sets to the scrape job).
    type: str
    default: runbook
  sections:
    description: The sources of findings, in the order the report shows them.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The section's title.
        type: str
        required: true
      source:
        description:
          - A short id for the source (letters, digits, C(_), C(.), C(-)), unique in the report; the C(source) label
            of the metrics and the JUnit test suite name (after O(job)).
        type: str
        required: true
      result:
        description:
          - A registered task result; its C(findings), C(failed), C(skipped), C(skip_reason) and C(msg) are read.
        type: dict
      findings:
        description:
          - Findings to use instead of O(sections[].result)'s, for a step that is not a health module (a backup, a purge).
          - Each a dict with C(severity) (one of V(ok), V(info), V(warning), V(unknown), V(critical)), C(check),
            C(message), and optionally C(object) and C(details).
        type: list
        elements: dict
  include_ok:
    description: List V(ok) findings in the Markdown and HTML reports too (they are always counted, and always in JSON and JUnit).
    type: bool
    default: false
  outputs:
    description: Where to write each format; every format is optional, and each needs its own absolute path in an existing directory.
    type: dict
    default: {}
    suboptions:
      markdown:
        description: The Markdown report (table cells escaped).
        type: path
      html:
        description: A self-contained HTML page (inline CSS, no script, nothing loaded from a network; every value escaped).
        type: path
      json:
        description: Everything in the report, every finding with its details, as JSON.
        type: path
      junit:
        description:
          - JUnit XML, one C(testsuite) per section and one C(testcase) per finding; a finding at or above
            O(junit_failure_level) is a C(failure), a skipped source C(skipped).
        type: path
      prometheus:
        description:
          - A node_exporter textfile collector file (its name must end in C(.prom) for node_exporter to read it).
          - C(runbook_findings), C(runbook_check_status), C(runbook_last_run_timestamp_seconds) and O(metrics).
        type: path
  junit_failure_level:
    description: The severity from which a finding is a failing JUnit test case.
    type: str
    choices: [info, warning, unknown, critical]
    default: warning
  metrics:
    description:
      - Extra gauges for the Prometheus textfile, for example the age of the newest backup of each set.
      - Each series gets the C(platform) and C(runbook_job) labels besides its own.
    type: list
    elements: dict
    suboptions:
      name:
        description: The metric name (letters, digits, C(_), C(:)); not one of the report's own metrics.
        type: str
        required: true
      help:
        description: The HELP text; every series of one name must give the same one.
        type: str
        default: ""
      labels:
        description: Its labels (names in Prometheus syntax; not C(platform) or C(runbook_job)).
        type: dict
        default: {}
      value:
        description:
          - The value (C(inf) and C(nan) accepted).
          - A value that changes on every run (an age computed by the play) changes the textfile and the JSON file
            on every run; give O(metrics[].since) instead for an age.
        type: float
      since:
        description:
          - For an age in seconds, the moment it counts from (ISO 8601), for example a backup's C(created) time.
          - The textfile gets the age at the generation time; like the generation time, a new age alone is no change.
          - The JSON file records the moment, not the age.
        type: str
  mode:
    description: The files' permissions, in octal.
    type: str
    default: "0640"
  now:
    description:
      - The generation time (ISO 8601; default the current time). Changing only this never rewrites a file.
    type: str
notes:
  - The module never fails because of what the findings say; compare RV(status) with a threshold in the play
    (for example with the P(runbook.ops.severity_at_least#filter) filter).
seealso:
  - module: runbook.ops.k8s_health
  - module: runbook.ops.backup_repo_info
"""

EXAMPLES = r"""
- name: Check the cluster
  runbook.ops.k8s_health:
  register: cluster
  failed_when: false

- name: Write the morning report in every format
  runbook.ops.findings_report:
    title: "Daily check: rust-security"
    platform: rust-security
    job: daily_check
    sections:
      - name: Kubernetes cluster
        source: k8s_health
        result: "{{ cluster }}"
      - name: Audit log purge
        source: pg_purge
        findings:
          - {severity: ok, check: pg_purge.rows, object: Table/auth/audit_logs, message: 1204 rows older than 90 days deleted}
    outputs:
      markdown: /var/lib/runbook/reports/daily-check.md
      html: /var/www/runbook/daily-check.html
      json: /var/lib/runbook/reports/daily-check.json
      junit: /var/lib/runbook/reports/daily-check.xml
      prometheus: /var/lib/node_exporter/textfile/runbook_daily_check.prom
    metrics:
      - name: runbook_backup_age_seconds
        help: Age of the newest complete backup of a set.
        labels: {kind: postgresql, set: auth_service}
        since: "2026-11-24T03:15:00Z"
      - name: runbook_backup_rpo_seconds
        help: Recovery point objective of a backup set.
        labels: {kind: postgresql, set: auth_service}
        value: 86400
  register: report

- name: Fail when something is critical
  ansible.builtin.fail:
    msg: "{{ report.msg }}"
  when: report.status | runbook.ops.severity_at_least('critical')
"""

RETURN = r"""
changed:
  description: Whether a file was (or, in check mode, would be) rewritten; a new generation time alone changes nothing.
  returned: always
  type: bool
  sample: true
msg:
  description: The overall status, the counts and what was written.
  returned: always
  type: str
  sample: "Daily check: rust-security is critical: 1 critical, 2 warning; wrote markdown, json; html unchanged"
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.031
status:
  description: The worst severity across every section, through the collection's one ranking.
  returned: success
  type: str
  sample: critical
summary:
  description: How many findings of each severity across every section, every severity present.
  returned: success
  type: dict
  sample: {ok: 14, info: 1, warning: 2, unknown: 0, critical: 1}
first:
  description: The findings to fix first (the critical ones, then unknown, then warning), at most ten, in section order.
  returned: success
  type: list
  elements: dict
  contains:
    section:
      description: The section's title.
      type: str
      sample: Kubernetes cluster
    source:
      description: The section's source id.
      type: str
      sample: k8s_health
    severity:
      description: V(critical), V(unknown) or V(warning).
      type: str
      sample: critical
    check:
      description: The finding's check id.
      type: str
      sample: deployment_available
    object:
      description: What the finding is about.
      type: str
      sample: Deployment/payments/auth-service
    message:
      description: What was found.
      type: str
      sample: 0 of 3 replicas available
sections:
  description: Each section judged, in the report's order.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The section's title.
      type: str
      sample: Kubernetes cluster
    source:
      description: The source id.
      type: str
      sample: k8s_health
    status:
      description: The worst severity of the section.
      type: str
      sample: critical
    summary:
      description: How many findings of each severity the section has.
      type: dict
      sample: {ok: 10, info: 0, warning: 1, unknown: 0, critical: 1}
files:
  description: One entry per format written, keyed by format (V(markdown), V(html), V(json), V(junit), V(prometheus)).
  returned: success
  type: dict
  sample: {markdown: {path: /var/lib/runbook/reports/daily-check.md, changed: true}}
  contains:
    path:
      description: The file.
      type: str
      sample: /var/lib/runbook/reports/daily-check.md
    changed:
      description: Whether its content (the generation time aside) or its mode changed.
      type: bool
      sample: true
generated:
  description: The generation time written into the files (UTC, ISO 8601) when they changed.
  returned: success
  type: str
  sample: "2026-11-24T09:00:02Z"
diff:
  description: The Markdown and JSON files before and after, for those that change, under C(--diff).
  returned: when diff mode is on and a Markdown or JSON file changes
  type: list
  elements: dict
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._report import ReportOptions, run_findings_report


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=dict(
            title=dict(type="str", required=True),
            platform=dict(type="str", default=""),
            job=dict(type="str", default="runbook"),
            sections=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                source=dict(type="str", required=True),
                result=dict(type="dict"),
                findings=dict(type="list", elements="dict"),
            ), required_one_of=[("result", "findings")]),
            include_ok=dict(type="bool", default=False),
            outputs=dict(type="dict", default={}, options=dict(
                markdown=dict(type="path"),
                html=dict(type="path"),
                json=dict(type="path"),
                junit=dict(type="path"),
                prometheus=dict(type="path"),
            )),
            junit_failure_level=dict(type="str", choices=["info", "warning", "unknown", "critical"], default="warning"),
            metrics=dict(type="list", elements="dict", options=dict(
                name=dict(type="str", required=True),
                help=dict(type="str", default=""),
                labels=dict(type="dict", default={}),
                value=dict(type="float"),
                since=dict(type="str"),
            ), mutually_exclusive=[("value", "since")], required_one_of=[("value", "since")]),
            mode=dict(type="str", default="0640"),
            now=dict(type="str"),
        ),
        supports_check_mode=True,
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, ReportOptions.from_params, run_findings_report)


if __name__ == "__main__":
    main()
