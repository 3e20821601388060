# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health gate of ``k8s_rollout``: ``samples`` measurements ``interval`` apart, each of
readiness (always), HTTP checks and ``k8s_health`` findings on the targets.

A measurement is ``ok`` True (passed), False (failed) or None (no data: an HTTP check nobody
answered). No data never counts as success: the gate ends *inconclusive* at the first such
sample; it ends *failed* when ``failure_limit`` samples failed, and *passed* only when every
sample passed.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import re
import ssl
import time
import typing as t
import urllib.parse

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task, options_from
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sObject, object_ref
from ansible_collections.runbook.ops.plugins.module_utils._k8s_health import Thresholds, check_pod, check_workload
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import KubernetesTunnel, TunnelTarget
from ansible_collections.runbook.ops.plugins.module_utils._names import duration
from ansible_collections.runbook.ops.plugins.module_utils._rollout import WORKLOAD_KINDS, pod_problems, settled

# name.namespace.svc[.cluster.local]: reached through the API server, not from where the task runs.
_IN_CLUSTER = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?$")
# Judged right after a rollout: any restart or not-ready Pod is a finding.
_STRICT = Thresholds(restart_warning=1, pod_pending_grace=0.0, pod_not_ready_grace=0.0, event_window=0.0,
                     cert_warning_days=0.0, cert_critical_days=0.0)


@dataclasses.dataclass(frozen=True)
class HttpCheck:
    url: str
    status: int
    timeout: float


@dataclasses.dataclass(frozen=True)
class GateOptions:
    samples: int
    interval: float
    failure_limit: int
    http: t.List[HttpCheck]
    k8s_health: bool

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "GateOptions":
        checks = []
        for i, item in enumerate(params["http"] or []):
            parsed = urllib.parse.urlsplit(item["url"])
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise RunbookError("health.http[%d].url %r must be an http:// or https:// URL" % (i, item["url"]))
            checks.append(HttpCheck(item["url"], item["status"], duration("health.http[%d].timeout" % i, item["timeout"], 0.1)))
        if params["samples"] < 1 or params["failure_limit"] < 1:
            raise RunbookError("health.samples and health.failure_limit must be at least 1")
        return options_from(cls, params, http=checks, interval=duration("health.interval", params["interval"], 0.0))

    @property
    def requested(self) -> bool:
        """More than the readiness a rollout wait already saw."""
        return bool(self.http or self.k8s_health or self.samples > 1)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _verdict(checks: t.Sequence[Result]) -> t.Optional[bool]:
    if any(c["ok"] is False for c in checks):
        return False
    if any(c["ok"] is None for c in checks):
        return None
    return True


class HealthReport:
    """The measurements taken and the verdict so far."""

    def __init__(self, opts: GateOptions) -> None:
        self.opts = opts
        self.samples: t.List[Result] = []
        self.status = "passed"

    def add(self, sample: Result) -> None:
        self.samples.append(sample)
        failures = sum(1 for s in self.samples if s["ok"] is False)
        if sample["ok"] is False and (failures >= self.opts.failure_limit or sample.get("final")):
            self.status = "failed"
        elif sample["ok"] is None:
            self.status = "inconclusive"

    @property
    def over(self) -> bool:
        return self.status != "passed" or len(self.samples) >= self.opts.samples

    def summary(self) -> str:
        bad = [c for s in self.samples for c in s["checks"] if c["ok"] is not True]
        details = "; ".join("%s %s: %s" % (c["check"], c["target"], c["detail"]) for c in bad[:5])
        return "%d sample(s), %d failed, %d without data%s" % (
            len(self.samples), sum(1 for s in self.samples if s["ok"] is False),
            sum(1 for s in self.samples if s["ok"] is None), " (%s)" % details if details else "")

    def as_result(self) -> Result:
        return {"status": self.status, "samples": self.samples, "failure_limit": self.opts.failure_limit}


def wait_measurement(problem: str) -> Result:
    """A rollout that did not settle is a failed readiness measurement, and the last one."""
    check = {"check": "readiness", "target": "rollout", "ok": False, "detail": problem}
    return {"at": _now(), "ok": False, "checks": [check], "final": True}


def run_gate(report: HealthReport, client: K8sClient, workloads: t.Sequence[t.Tuple[str, K8sObject]],
             task: Task[t.Any]) -> None:
    """Take samples into ``report`` until it passes, fails or is inconclusive."""
    while not report.over:
        if report.samples:
            time.sleep(report.opts.interval)
        checks: t.List[Result] = []
        for kind, obj in workloads:
            fresh = client.get("apps/v1", WORKLOAD_KINDS[kind], obj["metadata"]["name"], obj["metadata"]["namespace"]) or {}
            fresh.setdefault("kind", kind)
            checks.append(_readiness(client, kind, fresh))
            if report.opts.k8s_health:
                checks.append(_findings(client, fresh))
        for check in report.opts.http:
            checks.append(_http(client, check, task))
        report.add({"at": _now(), "ok": _verdict(checks), "checks": checks})


def _readiness(client: K8sClient, kind: str, obj: K8sObject) -> Result:
    ref = object_ref(kind, obj["metadata"]["name"], obj["metadata"]["namespace"])
    try:
        done, why = settled(kind, obj, int(obj["metadata"].get("generation") or 0))
    except RunbookError as exc:
        done, why = False, exc.msg
    problems = [] if done else pod_problems(client, obj)
    return {"check": "readiness", "target": ref, "ok": done, "detail": "; ".join([why] + problems if why else problems) or "ready"}


def _findings(client: K8sClient, obj: K8sObject) -> Result:
    meta = obj["metadata"]
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    now = datetime.datetime.now(datetime.timezone.utc)
    found = [check_workload(obj)]
    if labels:
        selector = ",".join("%s=%s" % item for item in sorted(labels.items()))
        found += [check_pod(pod, now, _STRICT) for pod in client.list("v1", "pods", meta["namespace"], label_selector=selector)]
    bad = [f for f in found if f is not None and f["severity"] in ("warning", "critical")]
    return {"check": "k8s_health", "target": object_ref(obj.get("kind", ""), meta["name"], meta["namespace"]),
            "ok": not bad, "detail": "; ".join("%s: %s" % (f["object"], f["message"]) for f in bad) or "no findings"}


def _http(client: K8sClient, check: HttpCheck, task: Task[t.Any]) -> Result:
    parsed = urllib.parse.urlsplit(check.url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    path = (parsed.path or "/") + ("?" + parsed.query if parsed.query else "")
    entry: Result = {"check": "http", "target": check.url, "ok": None, "status": None}
    inside = _IN_CLUSTER.match(host)
    try:
        if inside and parsed.scheme == "http":
            tunnel = KubernetesTunnel(client, inside.group(3), TunnelTarget("service", inside.group(1)), port)
            with tunnel as (local_host, local_port):
                entry["status"] = _get(local_host, local_port, "http", path, check.timeout, host)
        else:
            entry["status"] = _get(host, port, parsed.scheme, path, check.timeout, parsed.netloc)
    except (OSError, http.client.HTTPException, RunbookError) as exc:
        entry["detail"] = "no answer: %s" % (getattr(exc, "msg", None) or exc or type(exc).__name__)
        task.warn("health check %s had no answer: counted as no data, not as success" % check.url)
        return entry
    entry["ok"] = entry["status"] == check.status
    entry["detail"] = "HTTP %s (expected %d)" % (entry["status"], check.status)
    return entry


def _get(host: str, port: int, scheme: str, path: str, timeout: float, host_header: str) -> int:
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host_header, "User-Agent": "runbook.ops/k8s_rollout"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()
