"""The AWX / Automation Controller data in extensions/controller: schedules whose rules AWX accepts
and whose next occurrences are the runbooks' cadences, surveys AWX accepts that ask only for
variables the playbooks' roles declare, prompts that make schedules' and nodes' values count, and a
DR workflow whose schema is replaced on every apply."""

from __future__ import annotations

import datetime as dt
import typing as t

import pytest
from dateutil.rrule import rrulestr

from tests.harness.collection import REPO
from tests.harness.controller_data import awx_rrule_errors, controller_vars, playbook_options

DATA = controller_vars()
TEMPLATES = {jt["name"]: jt for jt in DATA["controller_templates"]}
WORKFLOWS = {wf["name"]: wf for wf in DATA["controller_workflows"]}
SCHEDULES = {s["name"]: s for s in DATA["controller_schedules"]}
UTC = dt.timezone.utc
FROM = dt.datetime(2027, 1, 1, tzinfo=UTC)  # a Friday
PRODUCTION_PLAYBOOKS = {"daily_check", "backup", "maintenance_window", "dr_drill", "dr_restore", "incident_response"}
# Survey question types and the Python type AWX wants their default to have.
SURVEY_TYPES = {"text": str, "textarea": str, "password": str, "multiplechoice": str, "multiselect": (str, list),
                "integer": int, "float": (int, float)}
# A survey answer is never a boolean; what each question type can feed into a role option.
ANSWER_FITS = {"text": {"str", "path", "raw"}, "textarea": {"str", "raw"}, "multiplechoice": {"str", "raw"},
               "multiselect": {"list", "raw"}, "integer": {"int", "raw"}, "float": {"float", "raw"}}


def occurrences(rule: str, count: int, start: dt.datetime = FROM) -> t.List[dt.datetime]:
    parsed = rrulestr(rule)
    found, moment = [], start - dt.timedelta(seconds=1)
    while len(found) < count:
        moment = parsed.after(moment)
        found.append(moment.astimezone(UTC))
    return found


def at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def days(start: dt.date, end: dt.date) -> t.Iterator[dt.date]:
    while start < end:
        yield start
        start += dt.timedelta(days=1)


def schedule_of(template: str, needle: str) -> dict:
    hits = [s for s in SCHEDULES.values() if s["unified_job_template"] == template and needle in s["name"]]
    assert len(hits) == 1, (template, needle, hits)
    return hits[0]


def survey_of(template: dict) -> t.List[dict]:
    return (template.get("survey_spec") or {}).get("spec", [])


def template_options(name: str) -> t.Dict[str, dict]:
    return playbook_options(TEMPLATES[name]["playbook"])


# ---------------------------------------------------------------------------------------------- rrules

@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_rrule_parses_and_is_one_awx_accepts(name):
    rule = SCHEDULES[name]["rrule"]
    assert rule.startswith("DTSTART;TZID=UTC:") and " RRULE:" in rule, rule
    assert awx_rrule_errors(rule) == [], rule
    first = occurrences(rule, 1)[0]
    assert first.tzinfo is not None and first >= FROM


def test_the_awx_rule_check_refuses_what_awx_refuses():
    # The check above would let these through unnoticed if it were vacuous.
    assert awx_rrule_errors("DTSTART;TZID=UTC:20270103T020000 RRULE:FREQ=MONTHLY;INTERVAL=1;BYDAY=1SU")
    assert awx_rrule_errors("DTSTART:20270103T020000Z RRULE:FREQ=DAILY;INTERVAL=1")
    assert awx_rrule_errors("DTSTART;TZID=UTC:20270103T020000 RRULE:FREQ=DAILY")
    assert awx_rrule_errors("RRULE:FREQ=DAILY;INTERVAL=1")


def test_daily_check_runs_every_day_at_0900_utc():
    rule = schedule_of("runbook.ops daily check", "daily check")["rrule"]
    assert occurrences(rule, 10) == [at(d, 9) for d in days(FROM.date(), FROM.date() + dt.timedelta(days=10))]


def test_weekly_report_runs_on_mondays_at_0200_utc():
    runs = occurrences(schedule_of("runbook.ops daily check", "weekly report")["rrule"], 8)
    assert runs[0] == dt.datetime(2027, 1, 4, 2, tzinfo=UTC)
    assert all(r.weekday() == 0 and (r.hour, r.minute) == (2, 0) for r in runs)
    assert all((b - a) == dt.timedelta(days=7) for a, b in zip(runs, runs[1:]))


def test_nightly_backup_at_0200_and_every_six_hours_for_the_hipaa_platform():
    nightly = schedule_of("runbook.ops backup", "nightly")
    assert occurrences(nightly["rrule"], 5) == [at(d, 2) for d in days(FROM.date(), FROM.date() + dt.timedelta(days=5))]
    hipaa = schedule_of("runbook.ops backup", "HIPAA")
    runs = occurrences(hipaa["rrule"], 12)
    assert [r.hour for r in runs[:5]] == [2, 8, 14, 20, 2]
    assert all((b - a) == dt.timedelta(hours=6) for a, b in zip(runs, runs[1:]))
    # Each platform has exactly one backup schedule.
    assert hipaa["limit"] == "hungryhippaahneties"
    assert "!hungryhippaahneties" in nightly["limit"]


def sundays_2027() -> t.List[dt.date]:
    return [d for d in days(dt.date(2027, 1, 1), dt.date(2028, 1, 1)) if d.weekday() == 6]


def test_monthly_window_on_the_first_sunday_0200_utc():
    runs = occurrences(schedule_of("runbook.ops maintenance window", "monthly")["rrule"], 12)
    first_sundays = [d for d in sundays_2027() if d.day <= 7]
    assert runs == [at(d, 2) for d in first_sundays]
    assert runs[:3] == [dt.datetime(2027, 1, 3, 2, tzinfo=UTC), dt.datetime(2027, 2, 7, 2, tzinfo=UTC),
                        dt.datetime(2027, 3, 7, 2, tzinfo=UTC)]


def test_database_maintenance_every_sunday_0200_once():
    """The weekly database maintenance and the monthly window (which includes it) together run on
    every Sunday at 02:00 UTC, each Sunday exactly once."""
    rules = [s["rrule"] for s in SCHEDULES.values() if s["unified_job_template"] == "runbook.ops maintenance window"]
    assert len(rules) == 2
    end = dt.datetime(2028, 1, 1, tzinfo=UTC)
    runs = sorted(r for rule in rules for r in rrulestr(rule).between(FROM, end, inc=True))
    assert runs == [at(d, 2) for d in sundays_2027()]
    weekly = schedule_of("runbook.ops maintenance window", "weekly database")
    # The weekly run does database maintenance only.
    assert weekly["extra_data"]["maintenance_window_restart"] is False
    assert "maintenance_window_pg_maintenance" not in weekly["extra_data"]


def test_quarterly_dr_drill_on_the_first_tuesday_of_the_quarter():
    runs = occurrences(schedule_of("runbook.ops DR drill", "quarterly")["rrule"], 4)
    assert [(r.month, r.weekday(), r.hour) for r in runs] == [(1, 1, 10), (4, 1, 10), (7, 1, 10), (10, 1, 10)]
    assert all(r.day <= 7 for r in runs)
    assert runs[0] == dt.datetime(2027, 1, 5, 10, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- templates

def test_a_job_template_for_every_production_playbook():
    playbooks = {jt["playbook"] for jt in TEMPLATES.values()}
    assert playbooks == {"playbooks/%s.yml" % name for name in PRODUCTION_PLAYBOOKS}
    for jt in TEMPLATES.values():
        assert (REPO / jt["playbook"]).is_file(), jt["playbook"]
        assert jt["project"] in {p["name"] for p in DATA["controller_projects"]}
        assert jt["inventory"] in {i["name"] for i in DATA["controller_inventories"]}
        assert jt["execution_environment"] in {e["name"] for e in DATA["controller_execution_environments"]}


def test_attached_credentials_come_from_the_shipped_credential_types():
    """The templates attach credentials by name; each is made from a credential type this directory
    ships (same name) or from AWX's built-in Kubernetes bearer-token type."""
    types = {ct["name"] for ct in DATA["controller_credential_types"]}
    for jt in TEMPLATES.values():
        assert len(jt["credentials"]) == len(set(jt["credentials"]))
        for credential in jt["credentials"]:
            assert credential in types or credential == "runbook.ops Kubernetes", (jt["name"], credential)


@pytest.mark.parametrize("name", sorted(TEMPLATES) + sorted(WORKFLOWS))
def test_surveys_are_ones_awx_accepts(name):
    template = TEMPLATES.get(name) or WORKFLOWS[name]
    spec = template["survey_spec"]
    assert template["survey_enabled"] is True
    assert isinstance(spec["name"], str) and isinstance(spec["description"], str) and spec["spec"]
    variables = [q["variable"] for q in spec["spec"]]
    assert len(variables) == len(set(variables)), variables
    for question in spec["spec"]:
        assert isinstance(question["question_name"], str) and isinstance(question["required"], bool)
        assert question["type"] in SURVEY_TYPES, question
        # Flat names: a survey variable is one top-level extra var.
        assert question["variable"].isidentifier(), question
        if question.get("default") not in (None, ""):
            assert isinstance(question["default"], SURVEY_TYPES[question["type"]]), question
        if question["type"] == "password":
            assert question.get("default") in (None, ""), "no password defaults: %s" % question
        if question["type"] in ("multiplechoice", "multiselect"):
            choices = question["choices"]
            defaults = question.get("default") or ""
            defaults = defaults.splitlines() if isinstance(defaults, str) else defaults
            assert all(d in choices for d in defaults), question
            if question["type"] == "multiplechoice":
                assert len(defaults) <= 1, question
        for bound in ("min", "max"):
            assert bound not in question or isinstance(question[bound], int), question


def workflow_playbooks(workflow: dict) -> t.List[str]:
    names = [n["unified_job_template"]["name"] for n in workflow["workflow_nodes"]
             if n["unified_job_template"].get("type") == "job_template"]
    return [TEMPLATES[n]["playbook"] for n in names]


@pytest.mark.parametrize("name", sorted(TEMPLATES) + sorted(WORKFLOWS))
def test_every_survey_variable_is_a_declared_role_option_it_can_feed(name):
    if name in TEMPLATES:
        options = template_options(name)
    else:
        options = {}
        for playbook in workflow_playbooks(WORKFLOWS[name]):
            options.update(playbook_options(playbook))
    assert options, "no role options found for %s" % name
    for question in survey_of(TEMPLATES.get(name) or WORKFLOWS[name]):
        option = options.get(question["variable"])
        assert option is not None, "%s asks for %s, which no role of its playbook declares" % (name, question["variable"])
        kind = option.get("type", "str")
        # AWX never answers with a boolean: a survey question for a bool option would hand the role
        # the string "false", which is true in a condition.
        assert kind in ANSWER_FITS[question["type"]], (name, question["variable"], kind, question["type"])
        allowed = option.get("choices")
        if allowed and question["type"] in ("multiplechoice", "multiselect"):
            assert set(question["choices"]) <= set(allowed), (name, question["variable"], question["choices"], allowed)


def test_no_secret_in_extra_vars_or_survey_defaults():
    secretish = ("password", "secret", "token", "api_key", "identity", "private")
    for item in list(TEMPLATES.values()) + list(WORKFLOWS.values()) + list(SCHEDULES.values()):
        for key in list((item.get("extra_vars") or {})) + list((item.get("extra_data") or {})):
            assert not any(word in key.lower() for word in secretish), (item["name"], key)
        for question in survey_of(item):
            assert question["type"] != "password", (item["name"], question)
            assert not any(word in question["variable"] for word in secretish), (item["name"], question)


# ---------------------------------------------------------------------------------------------- prompts

def prompts_for(template: dict, field: str) -> bool:
    return bool(template.get("ask_%s_on_launch" % field))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_values_are_prompted_so_awx_keeps_them(name):
    """awx#5614: a schedule's (or node's) extra vars and limit are dropped unless the template prompts
    for them; every variable it sets must also be an option of the playbook's roles."""
    schedule = SCHEDULES[name]
    template = TEMPLATES.get(schedule["unified_job_template"]) or WORKFLOWS.get(schedule["unified_job_template"])
    assert template is not None, "schedule %s names no template here" % name
    if "limit" in schedule:
        assert prompts_for(template, "limit"), name
    survey_vars = {q["variable"] for q in survey_of(template)}
    extra = schedule.get("extra_data") or {}
    if set(extra) - survey_vars:
        assert prompts_for(template, "variables"), name
    options = template_options(template["name"])
    for key in extra:
        assert key in options, "%s sets %s, which no role of %s declares" % (name, key, template["playbook"])
    # A scheduled launch cannot answer a survey: required questions need a default or a value here.
    for question in survey_of(template):
        if question["required"]:
            assert question.get("default") not in (None, "") or question["variable"] in extra, (name, question)


# ---------------------------------------------------------------------------------------------- DR workflow

def test_dr_workflow_is_drill_approval_restore_validation_with_its_schema_replaced():
    (workflow,) = WORKFLOWS.values()
    assert workflow["destroy_current_nodes"] is True
    nodes = {n["identifier"]: n for n in workflow["workflow_nodes"]}
    assert len(nodes) == len(workflow["workflow_nodes"])
    children = {i: [c["identifier"] for c in (n.get("related") or {}).get("success_nodes", [])] for i, n in nodes.items()}
    for i, n in nodes.items():
        related = n.get("related") or {}
        for kind in ("success_nodes", "failure_nodes", "always_nodes"):
            assert all(c["identifier"] in nodes for c in related.get(kind, [])), (i, kind)
    roots = set(nodes) - {c for cs in children.values() for c in cs}
    assert len(roots) == 1
    order, current = [], roots.pop()
    while True:
        order.append(nodes[current]["unified_job_template"])
        if not children[current]:
            break
        assert len(children[current]) == 1
        current = children[current][0]
    assert [(u.get("type"), u["name"]) for u in order] == [
        ("job_template", "runbook.ops DR drill"),
        ("workflow_approval", "runbook.ops approve the DR restore"),
        ("job_template", "runbook.ops DR restore"),
        ("job_template", "runbook.ops daily check"),
    ]
    assert order[1]["timeout"] > 0
    for node in nodes.values():
        if node.get("extra_data"):
            template = TEMPLATES[node["unified_job_template"]["name"]]
            assert prompts_for(template, "variables")
            assert set(node["extra_data"]) <= set(template_options(template["name"]))
