# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``findings_report``: one findings report, from the results of several modules, in the formats
people and machines read (Markdown, HTML, JSON, JUnit XML, a Prometheus textfile).

Every section is judged through the one severity ranking (``_findings.py``). A source that could not
run never reads as ``ok``: a failed result whose findings do not explain the failure gets a
``critical`` ``<source>.failed`` finding, a result with nothing to judge an ``unknown`` one.

Each report file is rewritten only when its content, the generation time aside, changes: it is
rendered with placeholders for the time, the existing file is compared against that rendering with
the placeholders read as "any timestamp", and a difference is written atomically (a temporary file
in the same directory, then ``rename``), so a reader never sees half a file. The Prometheus textfile
is the exception: it is what node_exporter serves now, so its run time and ages are refreshed on
every run, and it counts as changed only when something other than those times changed.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import math
import os
import re
import tempfile
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, parse_time)
from ansible_collections.runbook.ops.plugins.module_utils._findings import (
    SEVERITIES, Finding, counts_text, finding, sort_findings, summarize, worst)
from ansible_collections.runbook.ops.plugins.module_utils._names import local_path, no_control, shown

FORMATS = ("markdown", "html", "json", "junit", "prometheus")
DIFFABLE = ("markdown", "json")
# runbook_check_status: the severity's rank in the one ranking (documented in docs/reports.md).
STATUS_VALUE = {name: rank for rank, name in enumerate(SEVERITIES)}
FIRST_SEVERITIES = ("critical", "unknown", "warning")
FIRST_LIMIT = 10
BUILTIN_METRICS = ("runbook_findings", "runbook_check_status", "runbook_last_run_timestamp_seconds")
# Labels every series of the textfile carries. "job" would clash with the scrape job that Prometheus
# adds to everything node_exporter exposes (ours would be renamed exported_job), hence runbook_job.
COMMON_LABELS = ("platform", "runbook_job")

_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_MODE = re.compile(r"^0?[0-7]{3}$")
# Characters XML 1.0 cannot carry at all (control bytes other than tab, newline, carriage return).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&])")


# --------------------------------------------------------------------------- the generation time

@dataclasses.dataclass(frozen=True)
class Stamp:
    """The generation time as each format writes it (ISO 8601 UTC, JUnit's zone-less form, epoch)."""

    iso: str
    junit: str
    epoch: str

    @classmethod
    def at(cls, moment: datetime.datetime) -> "Stamp":
        iso = isoformat(moment)
        return cls(iso=iso, junit=iso[:-1], epoch=str(int(moment.timestamp())))


# Rendered in place of the time, so two renderings differ only where the content does. An age
# (``metrics[].since``) is a function of the time too: ``@@AGE_<since, Unix time>@@``.
PLACEHOLDER = Stamp(iso="@@GENERATED_ISO@@", junit="@@GENERATED_JUNIT@@", epoch="@@GENERATED_EPOCH@@")
_PLACEHOLDERS = re.compile(r"@@GENERATED_(ISO|JUNIT|EPOCH)@@|@@AGE_(-?\d+)@@")
_TIME_PATTERNS = {
    "ISO": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
    "JUNIT": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d",
    "EPOCH": r"-?\d+",
    "AGE": r"-?\d+",
}


def age_placeholder(since: datetime.datetime) -> str:
    return "@@AGE_%d@@" % int(since.timestamp())


def with_time(template: str, stamp: Stamp) -> str:
    """A rendering with placeholders, with the real time (and the ages at that time) in their place."""
    def value(match: "re.Match[str]") -> str:
        if match.group(2) is not None:
            return str(int(stamp.epoch) - int(match.group(2)))
        return str(getattr(stamp, match.group(1).lower()))
    return _PLACEHOLDERS.sub(value, template)


def same_but_time(template: str, existing: str) -> bool:
    """True when ``existing`` is ``template`` with any times (and ages) where the placeholders are."""
    parts = []
    position = 0
    for match in _PLACEHOLDERS.finditer(template):
        parts += [re.escape(template[position:match.start()]), _TIME_PATTERNS[match.group(1) or "AGE"]]
        position = match.end()
    parts.append(re.escape(template[position:]))
    return re.fullmatch("".join(parts), existing) is not None


# --------------------------------------------------------------------------- options

@dataclasses.dataclass(frozen=True)
class Section:
    """One source of findings, judged: its findings sorted worst first."""

    name: str
    source: str
    findings: t.Tuple[Finding, ...]

    @property
    def status(self) -> str:
        return summarize(self.findings)[0]

    @property
    def summary(self) -> t.Dict[str, int]:
        return summarize(self.findings)[1]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One extra gauge for the textfile (``platform`` and ``runbook_job`` are added to its labels)."""

    name: str
    help: str
    labels: t.Tuple[t.Tuple[str, str], ...]
    value: t.Optional[float]
    since: t.Optional[datetime.datetime] = None


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    title: str
    platform: str
    job: str
    sections: t.Tuple[Section, ...]
    include_ok: bool
    outputs: t.Tuple[t.Tuple[str, str], ...]
    junit_failure_level: str
    metrics: t.Tuple[Metric, ...]
    mode: int
    now: datetime.datetime

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "ReportOptions":
        for option in ("title", "platform", "job"):
            no_control(option, params[option])
        if not _MODE.match(params["mode"]):
            raise RunbookError("mode %s is not an octal file mode such as 0640" % shown(params["mode"]))
        return options_from(
            cls, params,
            sections=tuple(sections_from(params["sections"])),
            outputs=outputs_from(params["outputs"] or {}),
            metrics=tuple(metrics_from(params["metrics"])),
            mode=int(params["mode"], 8),
            now=parse_time(params["now"], "now").replace(microsecond=0),
        )


def outputs_from(given: t.Mapping[str, t.Any]) -> t.Tuple[t.Tuple[str, str], ...]:
    """``(format, absolute path)`` for every output asked for; two formats never share a file."""
    outputs = []
    for fmt in FORMATS:
        if given.get(fmt):
            path = local_path("outputs.%s" % fmt, given[fmt])
            if not os.path.isabs(path):
                raise RunbookError("outputs.%s %s is not an absolute path" % (fmt, shown(path)))
            outputs.append((fmt, os.path.normpath(path)))
    paths = [path for fmt, path in outputs]
    for fmt, path in outputs:
        if paths.count(path) > 1:
            raise RunbookError("outputs.%s %s is also another format's output: give each format its own file"
                               % (fmt, shown(path)))
    return tuple(outputs)


def sections_from(given: t.Sequence[t.Mapping[str, t.Any]]) -> t.Iterator[Section]:
    seen: t.Set[str] = set()
    for index, item in enumerate(given):
        where = "sections[%d]" % index
        source = no_control(where + ".source", item["source"])
        if not _SOURCE.match(source):
            raise RunbookError("%s.source %s must be a short id: letters, digits, '_', '.', '-'" % (where, shown(source)))
        if source in seen:
            raise RunbookError("%s.source %s is used by an earlier section: each section needs its own source id"
                               % (where, shown(source)))
        seen.add(source)
        explicit = None
        if item["findings"] is not None:
            explicit = [checked_finding("%s (%s).findings[%d]" % (where, source, n), entry)
                        for n, entry in enumerate(item["findings"])]
        findings = section_findings(source, item["result"], explicit, where)
        yield Section(name=str(item["name"]), source=source, findings=tuple(sort_findings(findings)))


def checked_finding(where: str, entry: t.Any) -> Finding:
    """A finding given by the caller or carried by a result, in the schema (severity checked)."""
    if not isinstance(entry, t.Mapping):
        raise RunbookError("%s is not a finding (a dict with severity, check, object, message)" % where)
    severity = entry.get("severity")
    if severity not in SEVERITIES:
        raise RunbookError("%s: severity %s is not one of %s" % (where, shown(severity), ", ".join(SEVERITIES)))
    for key in ("check", "message"):
        if entry.get(key) in (None, ""):
            raise RunbookError("%s has no %s" % (where, key))
    details = entry.get("details")
    return finding(str(severity), str(entry["check"]), str(entry.get("object") or ""), str(entry["message"]),
                   details if isinstance(details, t.Mapping) else None)


def section_findings(source: str, result: t.Optional[t.Mapping[str, t.Any]],
                     explicit: t.Optional[t.List[Finding]], where: str) -> t.List[Finding]:
    """The findings of one section: the given ones, else the result's (a loop's ``results`` too),
    plus what a failed, skipped or empty result means."""
    result = result or {}
    items = result.get("results")
    if explicit is None and "findings" not in result and isinstance(items, list) and items:
        findings: t.List[Finding] = []
        for n, item in enumerate(items):
            if isinstance(item, t.Mapping):
                findings += section_findings(source, item, None, "%s.result.results[%d]" % (where, n))
        return findings
    obj = _item_label(result) or source
    if result.get("skipped"):
        reason = str(result.get("skip_reason") or result.get("msg") or "")
        return (explicit or []) + [finding("info", source + ".skipped", obj,
                                           "skipped: %s" % reason if reason else "skipped")]
    if explicit is not None:
        findings = list(explicit)
    else:
        carried = result.get("findings") or []
        if not isinstance(carried, list):
            raise RunbookError("%s.result.findings is not a list" % where)
        findings = [checked_finding("%s.result.findings[%d]" % (where, n), entry) for n, entry in enumerate(carried)]
    message = str(result.get("msg") or "")
    if result.get("failed") and STATUS_VALUE[worst(f["severity"] for f in findings)] < STATUS_VALUE["warning"]:
        # The findings do not explain the failure: the source could not run, which is never ok.
        findings.append(finding("critical", source + ".failed", obj, message or "failed without a message"))
    elif not findings and not result.get("failed"):
        if message:
            findings.append(finding("ok", source + ".done", obj, message))
        elif explicit is None:
            findings.append(finding("unknown", source + ".no_result", obj, "gave no result to judge"))
    return findings


def _item_label(result: t.Mapping[str, t.Any]) -> str:
    """A loop item's label (or the item itself) when it is plain text; a dict item may hold
    credentials, so it is never shown."""
    for label in (result.get("_ansible_item_label"), result.get(str(result.get("ansible_loop_var") or "item"))):
        if isinstance(label, (str, int)) and not isinstance(label, bool) and str(label) and "\n" not in str(label):
            return str(label)
    return ""


def metrics_from(given: t.Optional[t.Sequence[t.Mapping[str, t.Any]]]) -> t.Iterator[Metric]:
    helps: t.Dict[str, str] = {}
    series: t.Set[t.Tuple[str, t.Tuple[t.Tuple[str, str], ...]]] = set()
    for index, item in enumerate(given or ()):
        where = "metrics[%d]" % index
        name = str(item["name"])
        if not _METRIC_NAME.match(name) or name in BUILTIN_METRICS:
            raise RunbookError("%s.name %s is not a metric name this report may add (letters, digits, '_', ':'; "
                               "not one of %s)" % (where, shown(name), ", ".join(BUILTIN_METRICS)))
        labels = {}
        for key, value in (item["labels"] or {}).items():
            if not _LABEL_NAME.match(str(key)) or str(key).startswith("__") or key in COMMON_LABELS:
                raise RunbookError("%s.labels: %s is not a label name this report may set" % (where, shown(key)))
            labels[str(key)] = str(value)
        help_text = str(item["help"] or "")
        if helps.setdefault(name, help_text) != help_text:
            raise RunbookError("%s: %s is given with two different help texts" % (where, name))
        key_labels = tuple(sorted(labels.items()))
        if (name, key_labels) in series:
            raise RunbookError("%s: %s%s is given twice" % (where, name, dict(key_labels)))
        series.add((name, key_labels))
        since = parse_time(item["since"], where + ".since") if item["since"] else None
        value = None if item["value"] is None else float(item["value"])
        yield Metric(name=name, help=help_text, labels=key_labels, value=value, since=since)


# --------------------------------------------------------------------------- the report

@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the renderers show: the options and what follows from the sections."""

    opts: ReportOptions
    status: str
    summary: t.Dict[str, int]
    first: t.List[t.Dict[str, t.Any]]

    @classmethod
    def of(cls, opts: ReportOptions) -> "Report":
        every = [f for section in opts.sections for f in section.findings]
        status, summary = summarize(every)
        first = [
            dict(section=section.name, source=section.source, severity=f["severity"], check=f["check"],
                 object=f["object"], message=f["message"])
            for severity in FIRST_SEVERITIES for section in opts.sections
            for f in section.findings if f["severity"] == severity
        ]
        return cls(opts=opts, status=status, summary=summary, first=first[:FIRST_LIMIT])

    @property
    def needing_a_look(self) -> int:
        return sum(self.summary[s] for s in FIRST_SEVERITIES)

    def shown(self, section: Section) -> t.List[Finding]:
        return [f for f in section.findings if self.opts.include_ok or f["severity"] != "ok"]


# --------------------------------------------------------------------------- Markdown

def md_text(value: t.Any) -> str:
    """Text safe in a Markdown paragraph or table cell: punctuation that Markdown or raw HTML would
    read is backslash-escaped (a ``<script>`` stays text), a line break becomes ``<br>``."""
    text = _MD_SPECIAL.sub(r"\\\1", str(value))
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _md_counts(summary: t.Mapping[str, int]) -> t.List[str]:
    order = tuple(reversed(SEVERITIES))
    return ["| " + " | ".join(order) + " |", "|" + " ---: |" * len(order),
            "| " + " | ".join(str(summary[s]) for s in order) + " |"]


def render_markdown(report: Report, stamp: Stamp) -> str:
    opts = report.opts
    lines = ["# %s" % md_text(opts.title), ""]
    facts = ["**Status: %s**" % report.status.upper(), counts_text(report.summary) or "nothing to report"]
    facts += ["platform %s" % md_text(opts.platform)] if opts.platform else []
    facts += ["job %s" % md_text(opts.job), "generated %s" % stamp.iso]
    lines += [" · ".join(facts), ""] + _md_counts(report.summary) + [""]
    if report.first:
        lines += ["## Fix first", ""]
        lines += ["%d. **%s** · %s · %s · %s: %s" % (n, f["severity"], md_text(f["section"]), md_text(f["check"]),
                                                     md_text(f["object"]), md_text(f["message"]))
                  for n, f in enumerate(report.first, 1)]
        if report.needing_a_look > len(report.first):
            lines.append("")
            lines.append("and %d more below." % (report.needing_a_look - len(report.first)))
        lines.append("")
    for section in opts.sections:
        lines += ["## %s: %s" % (md_text(section.name), section.status), ""]
        lines += ["Source %s · %s" % (md_text(section.source), counts_text(section.summary) or "nothing to report"), ""]
        shown_findings = report.shown(section)
        if shown_findings:
            lines += ["| severity | check | object | message |", "| --- | --- | --- | --- |"]
            lines += ["| %s | %s | %s | %s |" % (f["severity"], md_text(f["check"]), md_text(f["object"]),
                                                 md_text(f["message"])) for f in shown_findings]
            lines.append("")
        hidden = len(section.findings) - len(shown_findings)
        if hidden:
            lines += ["%d ok finding%s not listed." % (hidden, "" if hidden == 1 else "s"), ""]
        elif not shown_findings:
            lines += ["Nothing to report.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- HTML

SEVERITY_COLOURS = {
    "critical": "#b71c1c",
    "unknown": "#6a1b9a",
    "warning": "#b45309",
    "info": "#1565c0",
    "ok": "#2e7d32",
}

_CSS = """
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1a1a1a;
background:#fafafa;line-height:1.4}
main{max-width:72rem;margin:0 auto;padding:0 1rem 2rem}
.banner{color:#fff;padding:1.2rem 1rem}
.banner h1{margin:0;font-size:1.6rem}
.banner .status{font-size:2rem;font-weight:700;margin:.3rem 0;letter-spacing:.05em}
.banner .facts{margin:0;opacity:.95}
table{border-collapse:collapse;margin:.6rem 0;background:#fff}
th,td{border:1px solid #ccc;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#eee}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.msg{white-space:pre-wrap;word-break:break-word}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.92em}
.badge{display:inline-block;color:#fff;border-radius:.25rem;padding:0 .4rem;font-weight:600;font-size:.9em}
ol.first li{margin:.25rem 0}
section.source{border-top:1px solid #ddd;margin-top:1.2rem}
.note{color:#555}
"""


def _css() -> str:
    colours = "".join(".sev-%s{background:%s}" % (name, colour) for name, colour in SEVERITY_COLOURS.items())
    return _CSS.replace("\n", "") + colours


def esc(value: t.Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(severity: str) -> str:
    return '<span class="badge sev-%s">%s</span>' % (severity, severity)


def _html_counts(summary: t.Mapping[str, int]) -> str:
    order = tuple(reversed(SEVERITIES))
    return ('<table class="counts"><tr>%s</tr><tr>%s</tr></table>' % (
        "".join("<th>%s</th>" % _badge(s) for s in order),
        "".join('<td class="num">%d</td>' % summary[s] for s in order)))


def _html_section(report: Report, section: Section) -> t.List[str]:
    parts = ['<section class="source"><h2>%s %s</h2>' % (esc(section.name), _badge(section.status)),
             '<p class="note">source <code>%s</code> · %s</p>' % (
                 esc(section.source), esc(counts_text(section.summary) or "nothing to report"))]
    shown_findings = report.shown(section)
    if shown_findings:
        parts.append("<table><tr><th>severity</th><th>check</th><th>object</th><th>message</th></tr>")
        parts += ['<tr><td>%s</td><td><code>%s</code></td><td><code>%s</code></td><td class="msg">%s</td></tr>' % (
            _badge(f["severity"]), esc(f["check"]), esc(f["object"]), esc(f["message"])) for f in shown_findings]
        parts.append("</table>")
    hidden = len(section.findings) - len(shown_findings)
    if hidden:
        parts.append('<p class="note">%d ok finding%s not listed.</p>' % (hidden, "" if hidden == 1 else "s"))
    elif not shown_findings:
        parts.append('<p class="note">Nothing to report.</p>')
    parts.append("</section>")
    return parts


def render_html(report: Report, stamp: Stamp) -> str:
    """One self-contained page: inline CSS, no script, nothing loaded from anywhere (the Content
    Security Policy forbids it even if a value slipped through unescaped); every value escaped."""
    opts = report.opts
    facts = [counts_text(report.summary) or "nothing to report"]
    facts += ["platform %s" % opts.platform] if opts.platform else []
    facts += ["job %s" % opts.job, "generated %s" % stamp.iso]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>%s: %s</title>" % (esc(opts.title), report.status),
        "<style>%s</style></head><body>" % _css(),
        '<header class="banner sev-%s"><h1>%s</h1><p class="status">%s</p><p class="facts">%s</p></header>' % (
            report.status, esc(opts.title), report.status.upper(), esc(" · ".join(facts))),
        "<main>", _html_counts(report.summary),
    ]
    if report.first:
        parts.append('<h2>Fix first</h2><ol class="first">')
        parts += ["<li>%s %s · <code>%s</code> · <code>%s</code>: %s</li>" % (
            _badge(f["severity"]), esc(f["section"]), esc(f["check"]), esc(f["object"]), esc(f["message"]))
            for f in report.first]
        parts.append("</ol>")
        if report.needing_a_look > len(report.first):
            parts.append('<p class="note">and %d more below.</p>' % (report.needing_a_look - len(report.first)))
    for section in opts.sections:
        parts += _html_section(report, section)
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- JSON

def _json_number(value: float) -> t.Union[float, str]:
    """JSON has no infinity or NaN: those are written as Prometheus writes them."""
    return value if math.isfinite(value) else prom_value(value)


def _json_metric(metric: Metric) -> t.Dict[str, t.Any]:
    entry: t.Dict[str, t.Any] = dict(name=metric.name, help=metric.help, labels=dict(metric.labels))
    if metric.since is not None:
        entry["since"] = isoformat(metric.since)  # its age changes every second: the textfile has it
    else:
        entry["value"] = _json_number(t.cast(float, metric.value))
    return entry


def render_json(report: Report, stamp: Stamp) -> str:
    opts = report.opts
    document = {
        "title": opts.title,
        "platform": opts.platform,
        "job": opts.job,
        "generated": stamp.iso,
        "status": report.status,
        "summary": report.summary,
        "first": report.first,
        "sections": [dict(name=s.name, source=s.source, status=s.status, summary=s.summary, findings=list(s.findings))
                     for s in opts.sections],
        "metrics": [_json_metric(m) for m in opts.metrics],
    }
    return json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"


# --------------------------------------------------------------------------- JUnit XML

def xml_text(value: t.Any) -> str:
    """Text XML 1.0 can carry: control bytes it forbids are dropped (ElementTree escapes the rest)."""
    return _NOT_XML.sub("", str(value))


def _testcase(suite: ET.Element, classname: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", {"classname": xml_text(classname), "name": xml_text(name)})


def _junit_suite(report: Report, section: Section, stamp: Stamp) -> t.Tuple[ET.Element, int, int, int]:
    opts = report.opts
    level = STATUS_VALUE[opts.junit_failure_level]
    classname = "%s.%s" % (opts.job, section.source)
    suite = ET.Element("testsuite", {"name": xml_text(classname)})
    properties = ET.SubElement(suite, "properties")
    for key, value in (("platform", opts.platform), ("section", section.name), ("status", section.status)):
        ET.SubElement(properties, "property", {"name": key, "value": xml_text(value)})
    tests = failures = skipped = 0
    for item in section.findings:
        tests += 1
        case = _testcase(suite, classname, "%s %s" % (item["check"], item["object"]))
        text = "%s: %s %s: %s" % (item["severity"], item["check"], item["object"], item["message"])
        if item["check"].endswith(".skipped"):
            skipped += 1
            ET.SubElement(case, "skipped", {"message": xml_text(item["message"])})
        elif STATUS_VALUE[item["severity"]] >= level:
            failures += 1
            failure = ET.SubElement(case, "failure", {"message": xml_text(item["message"]), "type": item["severity"]})
            failure.text = xml_text(text)
        else:
            ET.SubElement(case, "system-out").text = xml_text(text)
    if not section.findings:
        tests += 1
        _testcase(suite, classname, "%s: nothing to report" % section.source)
    counts = {"tests": tests, "failures": failures, "errors": 0, "skipped": skipped}
    for key, count in counts.items():
        suite.set(key, str(count))
    suite.set("timestamp", stamp.junit)
    return suite, tests, failures, skipped


def _indent(element: ET.Element, depth: int) -> None:
    """Two spaces per level, as ``ET.indent`` (Python 3.9+) would: managed hosts may run 3.8."""
    children = list(element)
    if not children:
        return
    if not (element.text or "").strip():
        element.text = "\n" + "  " * (depth + 1)
    for child in children:
        _indent(child, depth + 1)
        child.tail = "\n" + "  " * (depth + 1)
    children[-1].tail = "\n" + "  " * depth


def render_junit(report: Report, stamp: Stamp) -> str:
    """One ``testsuite`` per section, one ``testcase`` per finding; a finding at or above
    ``junit_failure_level`` is a ``failure``, a skipped source a ``skipped`` test case."""
    root = ET.Element("testsuites", {"name": xml_text(report.opts.title)})
    totals = [0, 0, 0]
    for section in report.opts.sections:
        suite, tests, failures, skipped = _junit_suite(report, section, stamp)
        root.append(suite)
        totals = [totals[0] + tests, totals[1] + failures, totals[2] + skipped]
    for key, value in zip(("tests", "failures", "errors", "skipped"), (totals[0], totals[1], 0, totals[2])):
        root.set(key, str(value))
    root.set("timestamp", stamp.junit)
    _indent(root, 0)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- Prometheus textfile

def prom_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def metric_value(metric: Metric) -> str:
    if metric.since is not None:
        return age_placeholder(metric.since)
    return prom_value(t.cast(float, metric.value))


def prom_label_value(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prom_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _series(name: str, labels: t.Sequence[t.Tuple[str, str]], value: str) -> str:
    inner = ",".join('%s="%s"' % (key, prom_label_value(val)) for key, val in labels)
    return "%s{%s} %s" % (name, inner, value)


def _family(name: str, help_text: str, samples: t.Sequence[str]) -> t.List[str]:
    return ["# HELP %s %s" % (name, prom_help(help_text)), "# TYPE %s gauge" % name] + list(samples)


def render_prometheus(report: Report, stamp: Stamp) -> str:
    """The node_exporter textfile: findings per severity and status per source, the run's time, and
    the extra gauges (each with the ``platform`` and ``runbook_job`` labels)."""
    opts = report.opts
    common = [("platform", opts.platform), ("runbook_job", opts.job)]
    findings = [_series("runbook_findings", common + [("source", s.source), ("severity", severity)],
                        str(s.summary[severity])) for s in opts.sections for severity in SEVERITIES]
    status = [_series("runbook_check_status", common + [("source", s.source)], str(STATUS_VALUE[s.status]))
              for s in opts.sections]
    lines = _family("runbook_findings", "Findings of the last run per source and severity.", findings)
    lines += _family("runbook_check_status", "Worst severity of a source in the last run: "
                     "0 ok, 1 info, 2 warning, 3 unknown, 4 critical.", status)
    lines += _family("runbook_last_run_timestamp_seconds", "When the last run wrote this report (Unix time).",
                     [_series("runbook_last_run_timestamp_seconds", common, stamp.epoch)])
    names: t.List[str] = []
    for metric in opts.metrics:
        if metric.name not in names:
            names.append(metric.name)
    for name in names:
        family = [m for m in opts.metrics if m.name == name]
        lines += _family(name, family[0].help or name, [
            _series(name, common + list(m.labels), metric_value(m)) for m in family])
    return "\n".join(lines) + "\n"


RENDERERS: t.Dict[str, t.Callable[[Report, Stamp], str]] = {
    "markdown": render_markdown,
    "html": render_html,
    "json": render_json,
    "junit": render_junit,
    "prometheus": render_prometheus,
}


# --------------------------------------------------------------------------- files

@dataclasses.dataclass
class Written:
    path: str
    changed: bool
    before: t.Optional[str]
    after: str


def _read_existing(path: str) -> t.Optional[str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunbookError("cannot read the existing report %s: %s" % (path, exc.strerror or exc))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return ""  # not a report of ours: different, so it is replaced


def write_atomically(path: str, content: str, mode: int) -> None:
    """Write ``content`` beside ``path`` and rename it over ``path``: a reader sees the old file
    or the new one, never part of one."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise RunbookError("cannot write %s: directory %s does not exist" % (path, directory))
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    except OSError as exc:
        raise RunbookError("cannot write %s: %s" % (path, exc.strerror or exc))
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content.encode("utf-8"))
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as exc:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise RunbookError("cannot write %s: %s" % (path, exc.strerror or exc))


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one format goes and how: ``refresh`` rewrites the file on every run (not in check
    mode) even when only the time changed, without counting that as a change."""

    path: str
    mode: int
    check_mode: bool
    refresh: bool = False


def output(target: Target, template: str, stamp: Stamp) -> Written:
    """Write one rendering unless the file already holds it (time aside) with the same mode."""
    path, mode = target.path, target.mode
    existing = _read_existing(path)
    content = with_time(template, stamp)
    if existing is not None and same_but_time(template, existing):
        changed = (os.stat(path).st_mode & 0o7777) != mode
        if target.check_mode:
            return Written(path, changed, existing, existing)
        if target.refresh:
            write_atomically(path, content, mode)
        elif changed:
            try:
                os.chmod(path, mode)
            except OSError as exc:
                raise RunbookError("cannot set the mode of %s: %s" % (path, exc.strerror or exc))
        return Written(path, changed, existing, existing)
    if not target.check_mode:
        write_atomically(path, content, mode)
    return Written(path, True, existing, content)


# --------------------------------------------------------------------------- the task

def run_findings_report(task: Task[ReportOptions]) -> Result:
    opts = task.options
    report = Report.of(opts)
    stamp = Stamp.at(opts.now)
    files: t.Dict[str, t.Dict[str, t.Any]] = {}
    diffs = []
    for fmt, path in opts.outputs:
        if fmt == "prometheus" and not path.endswith(".prom"):
            task.warn("outputs.prometheus %s does not end in .prom: node_exporter's textfile collector "
                      "reads only *.prom files" % path)
        # The textfile is what node_exporter serves now: its run time and ages follow every run.
        target = Target(path, opts.mode, task.check_mode, refresh=fmt == "prometheus")
        written = output(target, RENDERERS[fmt](report, PLACEHOLDER), stamp)
        files[fmt] = {"path": path, "changed": written.changed}
        if task.diff and written.changed and fmt in DIFFABLE:
            diffs.append({"before_header": path, "after_header": path,
                          "before": written.before or "", "after": written.after})
    changed = [fmt for fmt, item in files.items() if item["changed"]]
    result: Result = {
        "changed": bool(changed),
        "msg": _message(opts.title, report, files, changed, task.check_mode),
        "status": report.status,
        "summary": report.summary,
        "first": report.first,
        "sections": [dict(name=s.name, source=s.source, status=s.status, summary=s.summary) for s in opts.sections],
        "files": files,
        "generated": stamp.iso,
    }
    if diffs:
        result["diff"] = diffs
    return result


def _message(title: str, report: Report, files: t.Mapping[str, t.Any], changed: t.Sequence[str],
             check_mode: bool) -> str:
    counts = counts_text(report.summary) or "nothing to report"
    if not files:
        written = "no output asked for"
    elif changed:
        written = "%s %s" % ("would write" if check_mode else "wrote", ", ".join(changed))
        unchanged = [fmt for fmt in files if fmt not in changed]
        written += "; %s unchanged" % ", ".join(unchanged) if unchanged else ""
    else:
        written = "every output already up to date"
    return "%s is %s: %s; %s" % (title, report.status, counts, written)
