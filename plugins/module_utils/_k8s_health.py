# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks behind ``runbook.ops.k8s_health``: read a cluster with one paged list per kind and
turn what is wrong into findings.

The evaluation functions (``check_*``) are pure: objects in, findings out, so they are unit tested
without a cluster. :func:`run_health` does the reading and the bookkeeping (per-namespace summary,
``unknown`` findings where the credentials may not read something).
"""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, parse_time,
)
from ansible_collections.runbook.ops.plugins.module_utils._findings import (
    Finding, finding, judged, worst,
)
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sForbidden, K8sNotFound, K8sObject, reports_api_requests,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import check_params, duration, k8s_namespace

CHECKS = ("workloads", "pods", "services", "pvcs", "events", "certificates", "jobs", "nodes")
DEFAULT_EXCLUDE = ("kube-system", "kube-public", "kube-node-lease")

# check -> the (api_version, plural) lists it needs
READS: t.Dict[str, t.Tuple[t.Tuple[str, str], ...]] = {
    "workloads": (("apps/v1", "deployments"), ("apps/v1", "statefulsets"), ("apps/v1", "daemonsets")),
    "pods": (("v1", "pods"),),
    "services": (("v1", "services"), ("discovery.k8s.io/v1", "endpointslices")),
    "pvcs": (("v1", "persistentvolumeclaims"),),
    "events": (("v1", "events"),),
    "certificates": (("cert-manager.io/v1", "certificates"),),
    "jobs": (("batch/v1", "jobs"),),
}
# Lists the label_selector applies to (events and endpoint slices are matched to their objects).
SELECTABLE = {"deployments", "statefulsets", "daemonsets", "pods", "services", "persistentvolumeclaims",
              "certificates", "jobs"}

POD_CRITICAL_WAITING = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                        "CreateContainerError", "InvalidImageName", "RunContainerError")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a Pod, an event or a Certificate becomes a finding (durations in seconds)."""

    restart_warning: int
    pod_pending_grace: float
    pod_not_ready_grace: float
    event_window: float
    cert_warning_days: float
    cert_critical_days: float

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "Thresholds":
        thresholds = options_from(cls, params, **{
            option: duration(option, params[option], 0.0)
            for option in ("pod_pending_grace", "pod_not_ready_grace", "event_window")})
        if thresholds.cert_critical_days > thresholds.cert_warning_days:
            raise RunbookError("cert_critical_days (%s) must not exceed cert_warning_days (%s)"
                               % (thresholds.cert_critical_days, thresholds.cert_warning_days))
        if thresholds.restart_warning < 1:
            raise RunbookError("restart_warning must be at least 1")
        return thresholds


@dataclasses.dataclass(frozen=True)
class HealthOptions:
    """What ``k8s_health`` checks, where, and when a finding fails the task."""

    namespaces: t.Optional[t.List[str]]
    namespace_selector: t.Optional[str]
    exclude_namespaces: t.List[str]
    label_selector: t.Optional[str]
    checks: t.List[str]
    thresholds: Thresholds
    fail_on: str
    now: datetime.datetime
    expected_objects: t.List["ExpectedObject"] = dataclasses.field(default_factory=list)

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "HealthOptions":
        check_params(params, {"namespaces": k8s_namespace})
        expected = [ExpectedObject.from_entry(n, e) for n, e in enumerate(params.get("expected_objects") or [])]
        return options_from(cls, params, thresholds=Thresholds.from_params(params),
                            checks=list(dict.fromkeys(params["checks"])), now=parse_time(params["now"], "now"),
                            expected_objects=expected)


# The group version of the kinds an expected object names most often; any other needs api_version.
KIND_API_VERSIONS = {
    "Service": "v1", "Secret": "v1", "ConfigMap": "v1", "ServiceAccount": "v1", "PersistentVolumeClaim": "v1",
    "Namespace": "v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
    "Job": "batch/v1", "CronJob": "batch/v1", "Ingress": "networking.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
    "Certificate": "cert-manager.io/v1",
}


@dataclasses.dataclass(frozen=True)
class ExpectedObject:
    """An object that must exist (the runbooks' first check: the platform's Services are there)."""

    kind: str
    name: str
    namespace: t.Optional[str]
    api_version: str

    @classmethod
    def from_entry(cls, index: int, entry: t.Mapping[str, t.Any]) -> "ExpectedObject":
        where = "expected_objects[%d]" % index
        kind, name = entry["kind"], entry["name"]
        api_version = entry.get("api_version") or KIND_API_VERSIONS.get(kind)
        if not api_version:
            raise RunbookError("%s: kind %s needs api_version (known without it: %s)"
                               % (where, kind, ", ".join(sorted(KIND_API_VERSIONS))))
        namespace = entry.get("namespace") or None
        if namespace:
            k8s_namespace(where + ".namespace", namespace)
        return cls(kind=kind, name=name, namespace=namespace, api_version=api_version)

    @property
    def ref(self) -> str:
        return "/".join(p for p in (self.kind, self.namespace, self.name) if p)


# ----------------------------------------------------------------------------------------------
# Helpers


def _meta(obj: K8sObject) -> K8sObject:
    return obj.get("metadata") or {}


def _ref(obj: K8sObject, kind: t.Optional[str] = None) -> str:
    meta = _meta(obj)
    return "/".join(p for p in (kind or obj.get("kind", ""), meta.get("namespace"), meta.get("name")) if p)


def _time(value: t.Optional[str]) -> t.Optional[datetime.datetime]:
    if not value:
        return None
    try:
        return parse_time(value)
    except RunbookError:
        return None


def _age(now: datetime.datetime, value: t.Optional[str]) -> t.Optional[float]:
    moment = _time(value)
    return None if moment is None else (now - moment).total_seconds()


def _condition(obj: K8sObject, kind: str) -> t.Optional[K8sObject]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return t.cast(K8sObject, cond)
    return None


def _human(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return "%d%s" % (seconds // size, unit)
    return "%ds" % seconds


def _f(severity: str, check: str, obj: str, message: str, namespace: t.Optional[str], **details: t.Any) -> Finding:
    details = {k: v for k, v in details.items() if v is not None}
    if namespace:
        details["namespace"] = namespace
    return finding(severity, check, obj, message, details)


# ----------------------------------------------------------------------------------------------
# Pure checks


def check_workload(obj: K8sObject) -> t.Optional[Finding]:
    """Deployment / StatefulSet / DaemonSet: ready vs desired, observed generation, progress deadline."""
    kind, meta, spec, status = obj.get("kind", ""), _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
    if kind == "DaemonSet":
        desired, ready = int(status.get("desiredNumberScheduled") or 0), int(status.get("numberReady") or 0)
    else:
        desired = int(spec["replicas"]) if spec.get("replicas") is not None else 1
        ready = int(status.get("readyReplicas") or 0)
    problems = []
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and (observed is None or int(observed) < int(generation)):
        problems.append("generation %s not observed by its controller yet (observed %s)" % (generation, observed))
    if ready < desired:
        problems.append("%d/%d replicas ready" % (ready, desired))
    progressing = _condition(obj, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        problems.append("rollout exceeded its progress deadline: %s" % (progressing.get("message") or ""))
    if not problems:
        return None
    severity = "critical" if desired > 0 and ready == 0 else "warning"
    return _f(severity, "workloads", _ref(obj), "; ".join(problems), meta.get("namespace"),
              desired=desired, ready=ready, generation=generation, observed_generation=observed,
              reason=progressing.get("reason") if progressing else None)


def workload_ready(obj: K8sObject) -> bool:
    return check_workload(obj) is None


def _container_statuses(pod: K8sObject) -> t.List[K8sObject]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])


def pod_restarts(pod: K8sObject) -> int:
    return sum(int(c.get("restartCount") or 0) for c in _container_statuses(pod))


def pod_ready(pod: K8sObject) -> bool:
    cond = _condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


def check_pod(pod: K8sObject, now: datetime.datetime, th: Thresholds) -> t.Optional[Finding]:
    """One finding per Pod with every problem it has; severity is the worst of them."""
    meta, status = _meta(pod), pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    if phase == "Succeeded" or meta.get("deletionTimestamp"):
        return None
    severities: t.List[str] = []
    reasons: t.List[str] = []
    problems: t.List[str] = []
    for cstat in _container_statuses(pod):
        name = cstat.get("name", "?")
        waiting = (cstat.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in POD_CRITICAL_WAITING:
            severities.append("critical")
            reasons.append(waiting["reason"])
            problems.append("container %s: %s%s" % (name, waiting["reason"],
                                                    " (%s)" % waiting["message"] if waiting.get("message") else ""))
        last = (cstat.get("lastState") or {}).get("terminated") or {}
        if last.get("reason") == "OOMKilled":
            severities.append("critical")
            reasons.append("OOMKilled")
            problems.append("container %s: last run was OOMKilled" % name)
    restarts = pod_restarts(pod)
    if restarts >= th.restart_warning:
        severities.append("warning")
        reasons.append("Restarts")
        problems.append("%d restarts (threshold %d)" % (restarts, th.restart_warning))
    if phase == "Pending":
        age = _age(now, status.get("startTime") or meta.get("creationTimestamp"))
        if age is not None and age >= th.pod_pending_grace:
            sched = _condition(pod, "PodScheduled") or {}
            why = sched.get("message") if sched.get("status") == "False" else ""
            severities.append("warning")
            reasons.append("Pending")
            problems.append("Pending for %s%s" % (_human(age), ": %s" % why if why else ""))
    elif phase == "Running" and not pod_ready(pod):
        cond = _condition(pod, "Ready") or {}
        age = _age(now, cond.get("lastTransitionTime") or status.get("startTime") or meta.get("creationTimestamp"))
        if age is not None and age >= th.pod_not_ready_grace and "critical" not in severities:
            severities.append("warning")
            reasons.append("NotReady")
            problems.append("not ready for %s" % _human(age))
    elif phase in ("Failed", "Unknown"):
        owner_kinds = {o.get("kind") for o in meta.get("ownerReferences") or []}
        if "Job" not in owner_kinds:
            severities.append("warning")
            reasons.append(status.get("reason") or phase)
            problems.append("phase %s%s" % (phase, ": %s" % status["message"] if status.get("message") else ""))
    if not severities:
        return None
    return _f(worst(severities), "pods", _ref(pod, "Pod"), "; ".join(problems), meta.get("namespace"),
              reasons=reasons, phase=phase, restarts=restarts, ready=pod_ready(pod), node=(pod.get("spec") or {}).get("nodeName"))


def ready_endpoints(slices: t.Iterable[K8sObject]) -> int:
    count = 0
    for eps in slices:
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is not False:
                count += len(endpoint.get("addresses") or []) and 1
    return count


def check_service(svc: K8sObject, slices: t.Sequence[K8sObject]) -> t.Optional[Finding]:
    spec = svc.get("spec") or {}
    if not spec.get("selector") or spec.get("type") == "ExternalName":
        return None
    ready = ready_endpoints(slices)
    if ready:
        return None
    total = sum(len(s.get("endpoints") or []) for s in slices)
    selector = ",".join("%s=%s" % kv for kv in sorted(spec["selector"].items()))
    return _f("critical", "services", _ref(svc, "Service"),
              "no ready endpoints (%d not ready) for selector %s" % (total, selector), _meta(svc).get("namespace"),
              selector=spec["selector"], endpoints=total, ready_endpoints=0)


def check_pvc(pvc: K8sObject) -> t.Optional[Finding]:
    phase = (pvc.get("status") or {}).get("phase") or "Pending"
    ns = _meta(pvc).get("namespace")
    if phase == "Lost":
        return _f("critical", "pvcs", _ref(pvc, "PersistentVolumeClaim"),
                  "Lost: its PersistentVolume %s is gone" % ((pvc.get("spec") or {}).get("volumeName") or "?"), ns, phase=phase)
    if phase == "Pending":
        spec = pvc.get("spec") or {}
        klass = spec.get("storageClassName")
        klass = "the default storage class" if klass is None else "storage class %s" % klass if klass else "no storage class"
        return _f("warning", "pvcs", _ref(pvc, "PersistentVolumeClaim"),
                  "Pending: not bound to a volume (%s)" % klass, ns,
                  phase=phase, storage_class=spec.get("storageClassName"))
    return None


def event_time(event: K8sObject) -> t.Optional[datetime.datetime]:
    series = event.get("series") or {}
    for value in (series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime"),
                  event.get("firstTimestamp"), _meta(event).get("creationTimestamp")):
        moment = _time(value)
        if moment is not None:
            return moment
    return None


def check_events(events: t.Iterable[K8sObject], now: datetime.datetime, th: Thresholds) -> t.List[Finding]:
    """Warning events within the window, grouped by involved object and reason."""
    groups: t.Dict[t.Tuple[str, str, str, str], t.Dict[str, t.Any]] = {}
    for event in events:
        if event.get("type") != "Warning":
            continue
        moment = event_time(event)
        if moment is None or (now - moment).total_seconds() > th.event_window or moment > now + datetime.timedelta(minutes=5):
            continue
        inv = event.get("involvedObject") or event.get("regarding") or {}
        ns = inv.get("namespace") or _meta(event).get("namespace") or ""
        key = (inv.get("kind", ""), ns, inv.get("name", ""), event.get("reason", ""))
        count = int((event.get("series") or {}).get("count") or event.get("count") or 1)
        group = groups.setdefault(key, {"count": 0, "last": moment, "message": event.get("message", "")})
        group["count"] += count
        if moment >= group["last"]:
            group["last"], group["message"] = moment, event.get("message", "")
    findings = []
    for (kind, ns, name, reason), group in groups.items():
        obj = "/".join(p for p in (kind, ns, name) if p)
        severity = "warning" if group["count"] > 1 else "info"
        findings.append(_f(severity, "events", obj, "%s x%d (last %s ago): %s" % (
            reason, group["count"], _human((now - group["last"]).total_seconds()), group["message"]), ns or None,
            reason=reason, count=group["count"], last_seen=isoformat(group["last"])))
    return findings


def check_certificate(cert: K8sObject, now: datetime.datetime, th: Thresholds) -> t.Optional[Finding]:
    meta, status = _meta(cert), cert.get("status") or {}
    ns = meta.get("namespace")
    ready = _condition(cert, "Ready")
    not_after = _time(status.get("notAfter"))
    days_left = None if not_after is None else round((not_after - now).total_seconds() / 86400.0, 2)
    details = dict(not_after=status.get("notAfter"), days_left=days_left, secret=(cert.get("spec") or {}).get("secretName"),
                   renewal_time=status.get("renewalTime"))
    if days_left is not None and days_left <= 0:
        return _f("critical", "certificates", _ref(cert, "Certificate"), "expired %s ago (notAfter %s)" % (
            _human(-days_left * 86400), status.get("notAfter")), ns, **details)
    if not ready or ready.get("status") != "True":
        why = (ready or {}).get("reason") or "no Ready condition"
        msg = (ready or {}).get("message")
        return _f("critical", "certificates", _ref(cert, "Certificate"),
                  "not Ready (%s)%s" % (why, ": %s" % msg if msg else ""), ns, reason=why, **details)
    if days_left is not None and days_left <= th.cert_critical_days:
        return _f("critical", "certificates", _ref(cert, "Certificate"), "expires in %s (notAfter %s, critical below %g days)"
                  % (_human(days_left * 86400), status.get("notAfter"), th.cert_critical_days), ns, **details)
    if days_left is not None and days_left <= th.cert_warning_days:
        return _f("warning", "certificates", _ref(cert, "Certificate"), "expires in %s (notAfter %s, warning below %g days)"
                  % (_human(days_left * 86400), status.get("notAfter"), th.cert_warning_days), ns, **details)
    return None


def _job_failed(job: K8sObject) -> t.Optional[K8sObject]:
    cond = _condition(job, "Failed")
    return cond if cond and cond.get("status") == "True" else None


def _job_done(job: K8sObject) -> bool:
    return bool(_job_failed(job) or (_condition(job, "Complete") or {}).get("status") == "True")


def check_jobs(jobs: t.Sequence[K8sObject]) -> t.List[Finding]:
    """Failed Jobs; for Jobs a CronJob owns, only whether the CronJob's last finished run failed."""
    findings = []
    by_cron: t.Dict[t.Tuple[str, str], t.List[K8sObject]] = {}
    for job in jobs:
        owner = next((o for o in _meta(job).get("ownerReferences") or [] if o.get("kind") == "CronJob"), None)
        if owner:
            by_cron.setdefault((_meta(job).get("namespace", ""), owner.get("name", "")), []).append(job)
            continue
        failed = _job_failed(job)
        if failed:
            findings.append(_f("warning", "jobs", _ref(job, "Job"), "failed: %s%s" % (
                failed.get("reason") or "Failed", " (%s)" % failed["message"] if failed.get("message") else ""),
                _meta(job).get("namespace"), reason=failed.get("reason"), failed_pods=(job.get("status") or {}).get("failed")))
    for (ns, cron), owned in by_cron.items():
        finished = [j for j in owned if _job_done(j)]
        if not finished:
            continue
        last = max(finished, key=lambda j: ((j.get("status") or {}).get("startTime") or _meta(j).get("creationTimestamp") or "",
                                            _meta(j).get("name", "")))
        failed = _job_failed(last)
        if failed:
            findings.append(_f("warning", "jobs", "CronJob/%s/%s" % (ns, cron), "last run %s failed: %s%s" % (
                _meta(last).get("name"), failed.get("reason") or "Failed",
                " (%s)" % failed["message"] if failed.get("message") else ""), ns,
                job=_meta(last).get("name"), reason=failed.get("reason")))
    return findings


def check_node(node: K8sObject) -> t.Optional[Finding]:
    problems, severities = [], []
    ready = _condition(node, "Ready")
    if not ready or ready.get("status") != "True":
        severities.append("critical")
        problems.append("NotReady (%s)" % ((ready or {}).get("reason") or (ready or {}).get("status") or "no Ready condition"))
    for kind in ("MemoryPressure", "DiskPressure", "PIDPressure"):
        cond = _condition(node, kind)
        if cond and cond.get("status") == "True":
            severities.append("warning")
            problems.append(kind)
    cond = _condition(node, "NetworkUnavailable")
    if cond and cond.get("status") == "True":
        severities.append("critical")
        problems.append("NetworkUnavailable")
    if (node.get("spec") or {}).get("unschedulable"):
        severities.append("info")
        problems.append("cordoned (unschedulable)")
    if not problems:
        return None
    return _f(worst(severities), "nodes", _ref(node, "Node"), "; ".join(problems), None)


# ----------------------------------------------------------------------------------------------
# Reading the cluster

ByNamespace = t.Dict[str, t.List[K8sObject]]
"""Objects of one kind, by namespace."""


def _select_namespaces(client: K8sClient, opts: HealthOptions, findings: t.List[Finding]) -> t.Optional[t.List[str]]:
    """The namespaces to check, or None when they cannot be listed (an ``unknown`` finding says so)."""
    exclude = set(opts.exclude_namespaces)
    if opts.namespaces:
        names = [n for n in dict.fromkeys(opts.namespaces) if n not in exclude]
        try:
            existing = {_meta(n)["name"] for n in client.list("v1", "namespaces")}
        except K8sForbidden:
            return names  # cannot verify; the lists below will say what they can read
        for name in names:
            if name not in existing:
                findings.append(_f("warning", "namespaces", "Namespace/%s" % name, "namespace does not exist", name))
        return [n for n in names if n in existing]
    try:
        items = client.list("v1", "namespaces", label_selector=opts.namespace_selector)
    except K8sForbidden as exc:
        findings.append(_f("unknown", "namespaces", "Namespace/*",
                           "cannot list namespaces (%s); set namespaces to check specific ones" % exc.api_message, None,
                           error=str(exc)))
        return None
    return sorted(_meta(n)["name"] for n in items if _meta(n)["name"] not in exclude)


def _unknown(check: str, plural: str, namespace: str, exc: K8sError) -> Finding:
    where = "in namespace %s" % namespace if namespace != "*" else "in any namespace"
    return _f("unknown", check, "%s/%s/*" % (plural, namespace) if namespace != "*" else "%s/*" % plural,
              "could not check: may not list %s %s (%s)" % (plural, where, exc.api_message or exc.reason or exc.status),
              None if namespace == "*" else namespace, status=exc.status, resource=plural)


class _NotServed(Exception):
    """The API server does not serve the resource (e.g. the cert-manager CRD is not installed)."""


_NOUNS = {"workloads": "workloads", "pods": "pods", "services": "services", "pvcs": "PVCs",
          "events": "warning events", "certificates": "certificates", "jobs": "jobs"}


def _ns_summary() -> t.Dict[str, t.Any]:
    return {"status": "ok", "workloads": {"ready": 0, "total": 0},
            "pods": {"running": 0, "ready": 0, "total": 0, "restarts": 0},
            "services_without_endpoints": [], "_severities": []}


class _Scan:
    """One run of the checks: the lists read, the findings and the per-namespace summary."""

    def __init__(self, client: K8sClient, opts: HealthOptions) -> None:
        self.client = client
        self.opts = opts
        self.findings: t.List[Finding] = []
        self.namespaces = _select_namespaces(client, opts, self.findings)
        self.per_ns: t.Dict[str, t.Dict[str, t.Any]] = {ns: _ns_summary() for ns in self.namespaces or []}
        self.ran: t.List[str] = []
        self.not_applicable: t.List[str] = []

    def read(self, check: str, api_version: str, plural: str) -> ByNamespace:
        selector = self.opts.label_selector if plural in SELECTABLE else None
        field = "type=Warning" if plural == "events" else None
        by_ns, errors = self.client.list_namespaces(api_version, plural, self.namespaces, selector, field)
        for ns, exc in errors.items():
            if isinstance(exc, K8sNotFound):
                # A list answers 404 only when the resource type is not served (CRD not installed).
                raise _NotServed()
            self.findings.append(_unknown(check, plural, ns, exc))
        if self.namespaces is None:
            return {ns: items for ns, items in by_ns.items() if ns not in self.opts.exclude_namespaces}
        return by_ns

    def summary(self, ns: str) -> t.Optional[t.Dict[str, t.Any]]:
        """The summary of ``ns`` (created for namespaces found while listing across all of them)."""
        if ns not in self.per_ns and self.namespaces is None:
            self.per_ns[ns] = _ns_summary()
        return self.per_ns.get(ns)

    def namespaced_check(self, check: str) -> None:
        if self.namespaces is not None and not self.namespaces:
            return
        before = len(self.findings)
        try:
            lists = {plural: self.read(check, api_version, plural) for api_version, plural in READS[check]}
        except _NotServed:
            self.not_applicable.append(check)
            return
        self.ran.append(check)
        _EVALUATORS[check](self, lists)
        if not any(f["check"] == check and f["severity"] != "ok" for f in self.findings[before:]):
            count = sum(len(items) for plural_lists in lists.values() for items in plural_lists.values())
            self.findings.append(_f("ok", check, "*", "%d %s checked, nothing to report" % (count, _NOUNS[check]),
                                    None, objects=count))

    def nodes(self) -> None:
        try:
            nodes = self.client.list("v1", "nodes")
        except K8sForbidden as exc:
            self.findings.append(_unknown("nodes", "nodes", "*", exc))
            return
        self.ran.append("nodes")
        node_findings = [f for f in (check_node(n) for n in nodes) if f]
        self.findings.extend(node_findings)
        if not node_findings:
            self.findings.append(_f("ok", "nodes", "*", "%d node(s) Ready, none under pressure" % len(nodes), None,
                                    objects=len(nodes)))

    def namespace_summaries(self) -> t.Dict[str, t.Dict[str, t.Any]]:
        for item in self.findings:
            ns = item["details"].get("namespace")
            if ns and ns in self.per_ns:
                self.per_ns[ns]["_severities"].append(item["severity"])
        for summary in self.per_ns.values():
            summary["status"] = worst(summary.pop("_severities"))
            summary["services_without_endpoints"].sort()
        return self.per_ns


@reports_api_requests
def run_health(task: Task[HealthOptions]) -> Result:
    """Everything ``k8s_health`` returns; fails, keeping it all, when ``fail_on`` is reached."""
    opts = task.options
    scan = _Scan(task.client(K8sClient.from_params), opts)
    for check in opts.checks:
        if check != "nodes":
            scan.namespaced_check(check)
    if "nodes" in opts.checks:
        scan.nodes()
    if opts.expected_objects:
        scan.findings.extend(check_expected(scan.client, opts.expected_objects))
        scan.ran.append("expected_objects")
    per_ns = scan.namespace_summaries()
    return judged("cluster health", scan.findings, opts.fail_on,
                  "%d namespace(s), checks: %s" % (len(per_ns), ", ".join(scan.ran) or "none"),
                  namespaces=per_ns, checks_run=scan.ran, checks_not_applicable=scan.not_applicable,
                  checked_at=isoformat(opts.now))


def check_expected(client: K8sClient, expected: t.Sequence[ExpectedObject]) -> t.List[Finding]:
    """One GET per expected object: a missing one is ``critical``, one the credentials may not read
    ``unknown``; all present gives one ``ok`` finding."""
    findings = []
    for item in expected:
        try:
            plural = client.plural_of(item.api_version, item.kind)
            client.get(item.api_version, plural, item.name, item.namespace)
        except K8sNotFound:
            findings.append(_f("critical", "expected_objects", item.ref, "expected to exist, not found",
                               item.namespace, kind=item.kind, name=item.name))
        except K8sForbidden as exc:
            findings.append(_f("unknown", "expected_objects", item.ref, "could not check: may not get it (%s)"
                               % (exc.api_message or exc.status), item.namespace, status=exc.status))
        except RunbookError as exc:  # a kind the API server does not serve
            findings.append(_f("critical", "expected_objects", item.ref, str(exc), item.namespace))
    if not findings:
        findings.append(_f("ok", "expected_objects", "*", "%d expected object(s) exist" % len(expected), None,
                           objects=len(expected)))
    return findings


# ----------------------------------------------------------------------------------------------
# Evaluating what was read (one function per check, objects already read)


def _workloads(scan: _Scan, lists: t.Mapping[str, ByNamespace]) -> None:
    for plural in ("deployments", "statefulsets", "daemonsets"):
        for ns, items in lists[plural].items():
            for obj in items:
                result = check_workload(obj)
                if result:
                    scan.findings.append(result)
                summary = scan.summary(ns)
                if summary is not None:
                    summary["workloads"]["total"] += 1
                    summary["workloads"]["ready"] += result is None


def _pods(scan: _Scan, lists: t.Mapping[str, ByNamespace]) -> None:
    for ns, pods in lists["pods"].items():
        for pod in pods:
            result = check_pod(pod, scan.opts.now, scan.opts.thresholds)
            if result:
                scan.findings.append(result)
            summary = scan.summary(ns)
            if summary is not None:
                summary["pods"]["total"] += 1
                summary["pods"]["running"] += (pod.get("status") or {}).get("phase") == "Running"
                summary["pods"]["ready"] += pod_ready(pod)
                summary["pods"]["restarts"] += pod_restarts(pod)


def _services(scan: _Scan, lists: t.Mapping[str, ByNamespace]) -> None:
    for ns, services in lists["services"].items():
        slices_by_service: t.Dict[str, t.List[K8sObject]] = {}
        for eps in lists["endpointslices"].get(ns, []):
            svc_name = (_meta(eps).get("labels") or {}).get("kubernetes.io/service-name")
            if svc_name:
                slices_by_service.setdefault(svc_name, []).append(eps)
        for svc in services:
            result = check_service(svc, slices_by_service.get(_meta(svc)["name"], []))
            if result:
                scan.findings.append(result)
                summary = scan.summary(ns)
                if summary is not None:
                    summary["services_without_endpoints"].append(_meta(svc)["name"])


def _pvcs(scan: _Scan, lists: t.Mapping[str, ByNamespace]) -> None:
    for pvcs in lists["persistentvolumeclaims"].values():
        scan.findings.extend(f for f in (check_pvc(p) for p in pvcs) if f)


def _events(scan: _Scan, lists: t.Mapping[str, ByNamespace]) -> None:
    events = (e for items in lists["events"].values() for e in items)
    scan.findings.extend(check_events(events, scan.opts.now, scan.opts.thresholds))


def _certificates(scan: _Scan, lists: t.Mapping[str, ByNamespace]) -> None:
    for certs in lists["certificates"].values():
        scan.findings.extend(f for f in (check_certificate(c, scan.opts.now, scan.opts.thresholds) for c in certs) if f)


def _jobs(scan: _Scan, lists: t.Mapping[str, ByNamespace]) -> None:
    scan.findings.extend(check_jobs([j for items in lists["jobs"].values() for j in items]))


_EVALUATORS: t.Dict[str, t.Callable[[_Scan, t.Mapping[str, ByNamespace]], None]] = {
    "workloads": _workloads, "pods": _pods, "services": _services, "pvcs": _pvcs, "events": _events,
    "certificates": _certificates, "jobs": _jobs,
}
