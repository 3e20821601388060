# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The maintenance window's guard, plan and report, as pure functions the role calls (documented in
``maintenance_window.yml``, ``maintenance_window_clock.yml``, ``maintenance_window_plan.yml`` and
``maintenance_window_report.yml``).

A window opens at ``start`` (UTC) on the listed weekdays, and when ``days_of_month`` is given only on
those days (the runbooks' "first Sunday" is Sunday and days 1 to 7), and stays open ``duration``; it
may run past midnight and past the end of a month. When several windows are open, the one that
closes last is the window. A test injects ``now``; the guard then keeps the offset between that
moment and the real clock, so a run's steps see time pass as they would in a real window.
"""

from __future__ import annotations

import datetime
import time
import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._findings import SEVERITIES, finding, worst
from ansible_collections.runbook.ops.plugins.module_utils._names import duration
from ansible_collections.runbook.ops.plugins.module_utils._repository import encryption_identity_argspec, repository_argspec

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# How far ahead the next opening is looked for (a Sunday that is the 31st comes a few times a year).
HORIZON_DAYS = 800
UTC = datetime.timezone.utc


class Window(t.NamedTuple):
    name: str
    weekdays: t.FrozenSet[int]
    days_of_month: t.FrozenSet[int]
    start: datetime.time
    length: datetime.timedelta

    @classmethod
    def parse(cls, raw: t.Mapping[str, t.Any], index: int) -> "Window":
        what = "maintenance_windows[%d]" % index
        name = str(raw.get("name") or "window")
        days = raw.get("weekdays") or []
        unknown = [d for d in days if str(d).lower() not in WEEKDAYS]
        if not days or unknown:
            raise RunbookError("%s (%s): weekdays must name at least one of %s, not %s"
                               % (what, name, ", ".join(WEEKDAYS), unknown or days))
        month_days = [int(d) for d in raw.get("days_of_month") or []]
        if any(not 1 <= d <= 31 for d in month_days):
            raise RunbookError("%s (%s): days_of_month must be between 1 and 31, not %s" % (what, name, month_days))
        hours, minutes = (str(raw.get("start", "")).split(":", 1) + [""])[:2]
        if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
            raise RunbookError("%s (%s): start %r is not HH:MM" % (what, name, raw.get("start")))
        length = duration("%s (%s) duration" % (what, name), raw.get("duration"), 60.0, 7 * 86400.0)
        return cls(name, frozenset(WEEKDAYS.index(str(d).lower()) for d in days), frozenset(month_days),
                   datetime.time(int(hours), int(minutes)), datetime.timedelta(seconds=length))

    def opens_on(self, day: datetime.date) -> bool:
        return day.weekday() in self.weekdays and (not self.days_of_month or day.day in self.days_of_month)

    def opening(self, day: datetime.date) -> datetime.datetime:
        return datetime.datetime.combine(day, self.start, tzinfo=UTC)

    def open_at(self, now: datetime.datetime) -> t.Optional[datetime.datetime]:
        """When the occurrence open at ``now`` opened (None when closed); it may have opened days ago."""
        back = self.length.days + 1
        for offset in range(back, -1, -1):
            day = now.date() - datetime.timedelta(days=offset)
            opened = self.opening(day)
            if self.opens_on(day) and opened <= now < opened + self.length:
                return opened
        return None

    def next_opening(self, now: datetime.datetime) -> t.Optional[datetime.datetime]:
        for offset in range(HORIZON_DAYS):
            day = now.date() + datetime.timedelta(days=offset)
            opened = self.opening(day)
            if opened > now and self.opens_on(day):
                return opened
        return None


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_now(value: t.Any) -> datetime.datetime:
    """ISO 8601 (``2026-03-01T02:30:00Z``; no zone means UTC), a datetime, or empty for the real clock."""
    if value is None or value == "":
        return datetime.datetime.now(UTC)
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        text = str(value).strip()
        try:
            moment = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise RunbookError("now %r is not an ISO 8601 time such as 2026-03-01T02:30:00Z" % (value,))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def window_state(windows: t.Any, now: t.Any = None, force: bool = False, forced_duration: t.Any = "4h",
                 real_now: t.Optional[float] = None) -> t.Dict[str, t.Any]:
    """Whether a window is open at ``now``, which, until when, and the next opening."""
    parsed = [Window.parse(raw, i) for i, raw in enumerate(windows or [])]
    moment = parse_now(now)
    real = time.time() if real_now is None else real_now
    open_now = []
    for window in parsed:
        opened = window.open_at(moment)
        if opened is not None:
            open_now.append((opened + window.length, opened, window))
    upcoming = [(opening, window) for window in parsed for opening in [window.next_opening(moment)] if opening]
    state: t.Dict[str, t.Any] = {
        "open": bool(open_now), "forced": False, "window": None, "opens_at": None, "closes_at": None,
        "seconds_left": 0.0, "elapsed_s": 0.0, "now": _stamp(moment), "day_of_month": moment.day,
        "clock_offset_s": round(moment.timestamp() - real, 3), "next": None,
    }
    if upcoming:
        opening, window = min(upcoming, key=lambda pair: pair[0])
        state["next"] = {"window": window.name, "opens_at": _stamp(opening), "closes_at": _stamp(opening + window.length)}
    if open_now:
        closes, opened, window = max(open_now, key=lambda entry: entry[0])
    elif force:
        opened, window = moment, Window("forced", frozenset(), frozenset(), moment.time(), datetime.timedelta(
            seconds=duration("maintenance_window_forced_duration", forced_duration, 60.0, 7 * 86400.0)))
        closes = moment + window.length
        state["forced"] = True
    else:
        state["msg"] = "no maintenance window is open at %s; %s" % (state["now"], _next_text(state["next"]))
        return state
    state.update(window=window.name, opens_at=_stamp(opened), closes_at=_stamp(closes),
                 seconds_left=round((closes - moment).total_seconds(), 3),
                 elapsed_s=round((moment - opened).total_seconds(), 3))
    if state["forced"]:
        state["msg"] = "forced outside the platform's windows: treated as a window from %s to %s; %s" % (
            state["opens_at"], state["closes_at"], _next_text(state["next"]))
    else:
        state["msg"] = "window %s is open from %s to %s (%ds left)" % (
            window.name, state["opens_at"], state["closes_at"], state["seconds_left"])
    return state


def _next_text(upcoming: t.Optional[t.Mapping[str, str]]) -> str:
    if not upcoming:
        return "the platform has no maintenance window"
    return "the next window is %s from %s to %s" % (upcoming["window"], upcoming["opens_at"], upcoming["closes_at"])


def window_clock(state: t.Mapping[str, t.Any], real_now: t.Optional[float] = None) -> t.Dict[str, t.Any]:
    """The window's clock at this moment: ``now``, ``open``, ``seconds_left`` (negative once closed),
    ``elapsed_s`` since the window opened, and ``epoch`` (the real clock, for durations)."""
    real = time.time() if real_now is None else real_now
    moment = datetime.datetime.fromtimestamp(real + float(state.get("clock_offset_s") or 0.0), UTC)
    closes, opens = state.get("closes_at"), state.get("opens_at")
    left = (parse_now(closes) - moment).total_seconds() if closes else 0.0
    elapsed = (moment - parse_now(opens)).total_seconds() if opens else 0.0
    return {"now": _stamp(moment), "open": left > 0, "seconds_left": round(left, 3), "elapsed_s": round(elapsed, 3),
            "epoch": round(real, 3)}


def maintenance_window(windows: t.Any, now: t.Any = None, force: bool = False, forced_duration: t.Any = "4h"
                       ) -> t.Dict[str, t.Any]:
    try:
        return window_state(windows, now, bool(force), forced_duration)
    except RunbookError as exc:
        raise AnsibleFilterError("maintenance_window: %s" % exc)


def maintenance_window_clock(state: t.Any) -> t.Dict[str, t.Any]:
    if not isinstance(state, t.Mapping) or "clock_offset_s" not in state:
        raise AnsibleFilterError("maintenance_window_clock expects the result of the maintenance_window filter")
    try:
        return window_clock(state)
    except RunbookError as exc:
        raise AnsibleFilterError("maintenance_window_clock: %s" % exc)


# ----------------------------------------------------------------------------------------------
# The plan: what each step acts on, with the module arguments it needs


def _pg_connection(connection: t.Mapping[str, t.Any], for_rotation: bool = False) -> t.Dict[str, t.Any]:
    """A database connection as the modules take it; the credential rotation module calls the
    libpq CA ``ssl_rootcert`` because its ``ca_cert`` is the Kubernetes one."""
    args = dict(connection)
    if for_rotation and "ca_cert" in args:
        args["ssl_rootcert"] = args.pop("ca_cert")
    return args


def _redis_connection(connection: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    return dict(connection)


def _maintenance(platform: t.Mapping[str, t.Any], day: int) -> t.List[t.Dict[str, t.Any]]:
    """``pg_maintenance`` per database; C(VACUUM FULL) only on the allowed days of the month. The role
    adds the window (the time left when the step starts), which vacuum_full needs."""
    items = []
    for db in platform["databases"]:
        spec = db["maintenance"]
        if not spec["enabled"]:
            continue
        operations = [op for op in spec["operations"] if op != "vacuum_full"]
        full = bool(spec["vacuum_full_tables"]) and day in spec["vacuum_full_days"]
        if full:
            operations.append("vacuum_full")
        args = dict(_pg_connection(db["connection"]), **spec["options"])
        args.update(db=db["name"], operations=operations, vacuum_full_tables=list(spec["vacuum_full_tables"]) if full else [])
        items.append({"object": "Database/%s" % db["name"], "vacuum_full": full, "args": args})
    return items


def _purges(platform: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    items = []
    for db in platform["databases"]:
        for rule in db["purge"]:
            schema, table = ([""] + rule["table"].rsplit(".", 1))[-2:]
            args = dict(_pg_connection(db["connection"]), **rule["options"])
            args.update(db=db["name"], table=table, column=rule["column"], older_than=rule["older_than"])
            if schema:
                args["schema"] = schema
            limit = args.pop("max_duration", None)
            items.append({"object": "Table/%s/%s" % (db["name"], rule["table"]), "args": args,
                          "max_duration_s": None if limit in (None, "") else duration(
                              "purge rule %s max_duration" % rule["table"], limit)})
    return items


def _credentials(platform: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    connections = {("postgresql", d["name"]): _pg_connection(d["connection"], True) for d in platform["databases"]}
    connections.update({("redis", r["name"]): _redis_connection(r["connection"]) for r in platform["redis"]})
    items = []
    for credential in platform["credentials"]:
        args = dict(platform["kubernetes"])
        args.update(connections[(credential["service"], credential["target"])])
        args.update(credential["options"])
        args["rotate_after"] = credential["rotate_after"]
        secret = credential["options"].get("secret") or {}
        items.append({"object": "Secret/%s/%s" % (secret.get("namespace", "?"), secret.get("name", "?")),
                      "service": credential["service"], "args": args})
    return items


def _signing_keys(platform: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    items = []
    for key in platform["signing_keys"]:
        args = dict(platform["kubernetes"], **key["options"])
        args.update(namespace=key["namespace"], secret_name=key["secret_name"], rotate_after=key["rotate_after"])
        items.append({"object": "Secret/%s/%s" % (key["namespace"], key["secret_name"]), "args": args})
    return items


def _restarts(platform: t.Mapping[str, t.Any], opens_at: t.Optional[str]) -> t.List[t.Dict[str, t.Any]]:
    """One restart per window: the template is stamped with the window's opening time, so a second
    run in the same window changes nothing."""
    items = []
    for workload in platform["workloads"]:
        if not workload["restart_in_window"]:
            continue
        args = dict(platform["kubernetes"])
        args.update(namespace=workload["namespace"], action="update", targets=["%s/%s" % (workload["kind"], workload["name"])],
                    wait_timeout="%ds" % workload["wait_timeout"],
                    patch={"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": opens_at}}})
        items.append({"object": "%s/%s/%s" % (workload["kind"], workload["namespace"], workload["name"]), "args": args})
    return items


def _backups(platform: t.Mapping[str, t.Any], plan: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    """A backup of each database the window writes to (maintenance, purge, a credential), each Redis
    whose credential may rotate, and the namespaces when Kubernetes objects may change."""
    repository = dict(platform["repository"])
    if not repository.get("repository"):
        return []
    touched_db = {item["args"]["db"] for item in plan["maintenance"] + plan["purge"]}
    touched_db |= {c["target"] for c in platform["credentials"] if c["service"] == "postgresql"}
    touched_redis = {c["target"] for c in platform["credentials"] if c["service"] == "redis"}
    # backup_repo verifies the Kubernetes backup: it takes the repository options, not the writing ones.
    readable = set(repository_argspec()) | set(encryption_identity_argspec())
    verify_args = {key: value for key, value in repository.items() if key in readable}
    items = []
    for db in platform["databases"]:
        if db["name"] in touched_db:
            args = dict(repository, **_pg_connection(db["connection"]))
            args.update(db["backup_options"])
            args.update(db=db["name"], set=db["set"])
            items.append({"object": "BackupSet/postgresql/%s" % db["set"], "kind": "postgresql", "args": args})
    for redis in platform["redis"]:
        if redis["name"] in touched_redis:
            args = dict(repository, **_redis_connection(redis["connection"]))
            args.update(redis["backup_options"])
            args["set"] = redis["set"]
            items.append({"object": "BackupSet/redis/%s" % redis["set"], "kind": "redis", "args": args})
    if plan["restart"] or plan["signing_keys"] or plan["credentials"] or platform["certificates"]["sources"]:
        k8s = platform["kubernetes_backup"]
        args = dict(repository, **platform["kubernetes"])
        args.update(k8s["options"])
        args.update(namespaces=list(platform["namespaces"]), set=k8s["set"])
        items.append({"object": "BackupSet/kubernetes/%s" % k8s["set"], "kind": "kubernetes", "args": args,
                      "verify_args": dict(verify_args, kind="kubernetes", set=k8s["set"])})
    return items


def window_plan(platform: t.Mapping[str, t.Any], state: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """Per step, the objects it acts on (no secrets: what a loop shows), and under ``args`` each module
    call's arguments by the item's ``key`` (connections and credentials included; the role keeps them
    out of its output)."""
    plan = _steps(platform, state)
    args: t.Dict[str, t.Any] = {}
    for step, items in list(plan.items()):
        groups = items if isinstance(items, t.Mapping) else {"": items}
        for group, entries in groups.items():
            for item in entries:
                key = " ".join(part for part in (step, group, item["object"]) if part)
                args[key] = item.pop("args")
                if "verify_args" in item:
                    args["verify " + key] = item.pop("verify_args")
                item["key"] = key
    plan["args"] = args
    return plan


def _steps(platform: t.Mapping[str, t.Any], state: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    plan: t.Dict[str, t.Any] = {
        "maintenance": _maintenance(platform, int(state["day_of_month"])),
        "purge": _purges(platform),
        "credentials": _credentials(platform),
        "signing_keys": _signing_keys(platform),
        "restart": _restarts(platform, state.get("opens_at")),
    }
    certificates = platform["certificates"]
    plan["certificates"] = [] if not certificates["sources"] else [{
        "object": "Certificates/%s" % platform["name"],
        "args": dict(platform["kubernetes"], **dict(certificates["options"], sources=certificates["sources"]))}]
    plan["cleanup"] = [{"object": "Namespace/%s" % ns, "args": dict(platform["kubernetes"], namespace=ns, action="cleanup")}
                       for ns in platform["namespaces"]]
    plan["backup"] = _backups(platform, plan)
    plan["health"] = _health(platform)
    return plan


def _health(platform: t.Mapping[str, t.Any]) -> t.Dict[str, t.List[t.Dict[str, t.Any]]]:
    """The opening and closing checks: the cluster, each database, each Redis."""
    cluster = dict(platform["kubernetes"], **platform["health"])
    cluster["namespaces"] = list(platform["namespaces"])
    return {
        "kubernetes": [{"object": "Namespaces/%s" % ",".join(platform["namespaces"]), "args": cluster}],
        "postgresql": [{"object": "Database/%s" % db["name"],
                        "args": dict(_pg_connection(db["connection"]), **dict(db["health"], db=db["name"]))}
                       for db in platform["databases"]],
        "redis": [{"object": "Redis/%s" % redis["name"], "args": dict(_redis_connection(redis["connection"]), **redis["health"])}
                  for redis in platform["redis"]],
    }


def maintenance_window_plan(platform: t.Any, state: t.Any) -> t.Dict[str, t.Any]:
    if not isinstance(platform, t.Mapping) or "databases" not in platform:
        raise AnsibleFilterError("maintenance_window_plan expects runbook_platform as the platform role sets it")
    if not isinstance(state, t.Mapping) or "day_of_month" not in state:
        raise AnsibleFilterError("maintenance_window_plan expects the result of the maintenance_window filter")
    try:
        return window_plan(platform, state)
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError("maintenance_window_plan: the platform description lacks %s; "
                                 "let runbook.ops.platform fill in its defaults first" % exc)


# ----------------------------------------------------------------------------------------------
# The report


def _results(registered: t.Any) -> t.List[t.Mapping[str, t.Any]]:
    """A registered result, or each result of a registered loop."""
    if not isinstance(registered, t.Mapping):
        return []
    if isinstance(registered.get("results"), list):
        return [r for r in registered["results"] if isinstance(r, t.Mapping)]
    return [registered]


def health_findings(sources: t.Sequence[t.Any]) -> t.List[t.Dict[str, t.Any]]:
    """Every finding of the health results; one that failed without findings is a critical finding,
    one skipped gives none."""
    found: t.List[t.Dict[str, t.Any]] = []
    for registered in sources:
        for result in _results(registered):
            if result.get("skipped"):
                continue
            if isinstance(result.get("findings"), list):
                found.extend(dict(f) for f in result["findings"] if f.get("severity") in SEVERITIES)
            elif result.get("failed"):
                label = _label(result)
                found.append(finding("critical", "health_check", label, "could not run: %s" % result.get("msg", "no message")))
    return found


def _label(result: t.Mapping[str, t.Any]) -> str:
    item = result.get("item")
    if isinstance(item, t.Mapping) and item.get("object"):
        return str(item["object"])
    if isinstance(item, t.Mapping) and item.get("name"):
        return str(item["name"])
    return "*"


_ATTENTION = ("warning", "unknown", "critical")


def new_findings(closing: t.Sequence[t.Mapping[str, t.Any]], opening: t.Sequence[t.Mapping[str, t.Any]]
                 ) -> t.List[t.Dict[str, t.Any]]:
    """Findings of the closing check that need attention and were not there (or less severe) at the opening."""
    before: t.Dict[t.Tuple[str, str], str] = {}
    for item in opening:
        key = (str(item.get("check")), str(item.get("object")))
        before[key] = worst([before.get(key, "ok"), str(item.get("severity"))])
    fresh = []
    for item in closing:
        severity = str(item.get("severity"))
        was = before.get((str(item.get("check")), str(item.get("object"))))
        if severity in _ATTENTION and (was is None or SEVERITIES.index(was) < SEVERITIES.index(severity)):
            details = dict(item.get("details") or {}, severity_at_opening=was)
            fresh.append(dict(item, details=details, message="new since the opening check: %s" % item.get("message")))
    return fresh


def _step_result_finding(step: t.Mapping[str, t.Any], result: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    check = "maintenance_%s" % step["step"]
    label = _label(result)
    msg = str(result.get("msg") or ("changed" if result.get("changed") else "nothing to do"))
    if result.get("failed"):
        return finding("critical", check, label, "failed: %s" % msg)
    if result.get("skipped") is True and "msg" not in result:
        # Items are guarded by the window's clock: a false condition means it closed first.
        return finding("info", check, label, "skipped: window closed before it started")
    severity = "ok"
    if result.get("stopped_because") or result.get("rolled_back"):
        severity = "warning"
    if step["step"] == "maintenance" and result.get("skipped"):
        severity = "info"  # targets skipped (lock not granted, window closed): reported, tried again next window
    details = {key: result[key] for key in ("changed", "deleted", "remaining", "stopped_because", "done", "renewed",
                                            "rotated", "backup_id", "duration_s", "rolled_back") if key in result}
    return finding(severity, check, label, msg, details)


def step_findings(step: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    check = "maintenance_%s" % step["step"]
    status = step.get("status")
    timing = " (%.1fs)" % float(step.get("duration_s") or 0.0)
    if status == "skipped":
        return [finding("info", check, step.get("object") or step["step"], "skipped: %s" % step.get("reason"))]
    results = [r for r in step.get("results") or [] if isinstance(r, t.Mapping)]
    found = [_step_result_finding(step, r) for r in results]
    if not found:
        found = [finding("ok", check, step["step"], "nothing to do")]
    if status == "failed" and not any(f["severity"] == "critical" for f in found):
        found.append(finding("critical", check, step["step"], "failed: %s" % step.get("reason")))
    for item in found:
        item["message"] += timing
        item.setdefault("details", {})["step_duration_s"] = step.get("duration_s")
    return found


def window_report(steps: t.Sequence[t.Mapping[str, t.Any]], state: t.Mapping[str, t.Any], opening: t.Sequence[t.Any],
                  closing: t.Sequence[t.Any]) -> t.List[t.Dict[str, t.Any]]:
    """``findings_report`` sections: the window, the opening check, each step, the closing check and what is new."""
    window = finding("warning" if state.get("forced") else "ok", "maintenance_window", "Window/%s" % state.get("window"),
                     str(state.get("msg")), {key: state.get(key) for key in ("opens_at", "closes_at", "forced", "next")})
    sections = [{"name": "Window", "source": "maintenance_window", "findings": [window]}]
    before = health_findings(opening)
    sections.append({"name": "Opening health check", "source": "health_before", "findings": before})
    for step in steps:
        sections.append({"name": step["title"], "source": step["step"], "findings": step_findings(step)})
    if closing:
        after = health_findings(closing)
        fresh = new_findings(after, before)
        sections.append({"name": "Closing health check", "source": "health_after", "findings": after})
        sections.append({"name": "New since the opening check", "source": "health_new", "findings": fresh or [
            finding("ok", "health_new", "*", "no new finding since the opening check")]})
    return sections


def maintenance_window_report(steps: t.Any, state: t.Any, opening: t.Any = None, closing: t.Any = None
                              ) -> t.List[t.Dict[str, t.Any]]:
    if not isinstance(steps, list) or not isinstance(state, t.Mapping):
        raise AnsibleFilterError("maintenance_window_report expects the step records and the window state")
    return window_report(steps, state, list(opening or []), list(closing or []))


class FilterModule:
    """runbook.ops maintenance window filters."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"maintenance_window": maintenance_window, "maintenance_window_clock": maintenance_window_clock,
                "maintenance_window_plan": maintenance_window_plan, "maintenance_window_report": maintenance_window_report}
