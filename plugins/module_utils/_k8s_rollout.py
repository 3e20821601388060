# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work behind ``runbook.ops.k8s_rollout``: ordered start and stop, restarts, scaling,
health-gated updates with automatic rollback, rollback to a recorded revision, status, and the
cleanup of finished Pods and failed Jobs.

Targets are resolved and the credentials' permissions checked (SelfSubjectAccessReview) before
anything changes. Every write is a patch conditional on the resourceVersion read; every wait
watches the workload (:func:`._rollout.wait_settled`). ``stop`` records what ``start`` restores in
the annotation :data:`STOP_RECORD`; ``update`` records the revision it started from in
:data:`UPDATE_RECORD`, which ``rollback`` and the health gate go back to.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, options_from,
)
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sConflict, K8sForbidden, K8sNotFound, K8sObject, object_ref, reports_api_requests,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import check_params, duration, k8s_name, k8s_namespace
from ansible_collections.runbook.ops.plugins.module_utils._rollout import (
    SCALABLE_KINDS, WORKLOAD_KINDS, Waited, current_revision, pod_problems, revision_template_patch, revisions,
    wait_settled,
)
from ansible_collections.runbook.ops.plugins.module_utils._rollout_gate import (
    GateOptions, HealthReport, run_gate, wait_measurement,
)

ACTIONS = ("restart", "scale", "stop", "start", "update", "rollback", "status", "cleanup")
# Actions that act on workloads (one of targets, label_selector, all, steps names them).
WORKLOAD_ACTIONS = ACTIONS[:-1]
STOP_RECORD = "runbook.ops/stopped"
UPDATE_RECORD = "runbook.ops/pre-update-revision"
DRAINED_KEY = "runbook.ops/drained"
_KIND_WORDS = {"deployment": "Deployment", "deployments": "Deployment", "deploy": "Deployment",
               "statefulset": "StatefulSet", "statefulsets": "StatefulSet", "sts": "StatefulSet",
               "daemonset": "DaemonSet", "daemonsets": "DaemonSet", "ds": "DaemonSet"}
_WRITES = ("restart", "scale", "stop", "start", "update", "rollback")
FINISHED_PHASES = ("Succeeded", "Failed")


class TargetRef(t.NamedTuple):
    kind: str
    name: str

    def __str__(self) -> str:
        return "%s/%s" % (self.kind, self.name)


def parse_target(text: t.Any, what: str = "targets") -> TargetRef:
    """``Deployment/auth-service`` (also ``deployment/…``, ``sts/…``, ``ds/…``) to a :class:`TargetRef`."""
    kind, sep, name = str(text or "").strip().partition("/")
    canonical = _KIND_WORDS.get(kind.lower())
    if not sep or canonical is None:
        raise RunbookError("%s: %r must be Kind/name with Kind one of Deployment, StatefulSet, DaemonSet "
                           "(for example Deployment/auth-service)" % (what, text))
    return TargetRef(canonical, k8s_name(what, name))


@dataclasses.dataclass(frozen=True)
class Step:
    targets: t.List[TargetRef]
    wait_timeout: float


@dataclasses.dataclass(frozen=True)
class RolloutOptions:
    """What ``k8s_rollout`` does, to which workloads, and how it waits and judges."""

    namespace: str
    action: str
    targets: t.Optional[t.List[TargetRef]]
    label_selector: t.Optional[str]
    all_workloads: bool
    steps: t.Optional[t.List[Step]]
    replicas: t.Optional[int]
    drain_seconds: float
    wait: bool
    wait_timeout: float
    images: t.Optional[t.Dict[str, str]]
    env: t.Optional[t.Dict[str, str]]
    resources: t.Optional[t.Dict[str, t.Dict[str, t.Any]]]
    patch: t.Optional[t.Dict[str, t.Any]]
    revision: t.Optional[int]
    health: GateOptions

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RolloutOptions":
        check_params(params, {"namespace": k8s_namespace})
        if params["action"] == "cleanup" and (params["targets"] or params["all"] or params["steps"]):
            raise RunbookError("action cleanup works on the Pods and Jobs of the namespace (narrowed by label_selector); "
                               "targets, all and steps do not apply")
        targets = [parse_target(item) for item in params["targets"]] if params["targets"] else None
        steps = None
        if params["steps"]:
            steps = [Step([parse_target(item, "steps[%d].targets" % i) for item in step["targets"]],
                          duration("steps[%d].wait_timeout" % i, step["wait_timeout"] or params["wait_timeout"], 0.0))
                     for i, step in enumerate(params["steps"])]
        if params["replicas"] is not None and params["replicas"] < 0:
            raise RunbookError("replicas must not be negative")
        return options_from(cls, params, targets=targets, steps=steps, all_workloads=params["all"] is True,
                            wait_timeout=duration("wait_timeout", params["wait_timeout"], 0.0),
                            drain_seconds=duration("drain_seconds", params["drain_seconds"], 0.0),
                            health=GateOptions.from_params(params["health"]))

    @property
    def scaling(self) -> bool:
        return self.action in ("scale", "stop", "start")


def _stamp() -> str:
    """UTC with milliseconds: steps seconds apart must be told apart."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Workload:
    """One target as read at the start, and what happened to it (its ``targets`` entry)."""

    def __init__(self, kind: str, obj: K8sObject) -> None:
        self.kind = kind
        self.obj = obj
        self.name: str = obj["metadata"]["name"]
        self.namespace: str = obj["metadata"]["namespace"]
        self.plural = WORKLOAD_KINDS[kind]
        self.ref = object_ref(kind, self.name, self.namespace)
        self.entry: Result = {"object": self.ref, "kind": kind, "name": self.name, "action": "none",
                              "changed": False, "replicas": {"before": self.replicas, "after": self.replicas},
                              "revision": {"before": None, "after": None}, "wait_s": None, "ready_at": None}

    @property
    def annotations(self) -> t.Dict[str, str]:
        return t.cast(t.Dict[str, str], (self.obj.get("metadata") or {}).get("annotations") or {})

    @property
    def replicas(self) -> t.Optional[int]:
        if self.kind == "DaemonSet":
            return None
        value = (self.obj.get("spec") or {}).get("replicas")
        return 1 if value is None else int(value)

    @property
    def stop_record(self) -> t.Optional[t.Dict[str, t.Any]]:
        text = self.annotations.get(STOP_RECORD)
        if not text:
            return None
        try:
            return t.cast(t.Dict[str, t.Any], json.loads(text))
        except ValueError:
            raise RunbookError("%s: annotation %s is not the JSON k8s_rollout writes: %r" % (self.ref, STOP_RECORD, text))

    @property
    def generation(self) -> int:
        return int((self.obj.get("metadata") or {}).get("generation") or 0)

    def done(self, action: str, after: K8sObject, changed: bool) -> None:
        self.entry.update(action=action, changed=self.entry["changed"] or changed)
        self.obj = after
        self.entry["replicas"]["after"] = self.replicas


class Rollout:
    """One run: the client, the options, the workloads met so far, and the result being built."""

    def __init__(self, task: Task[RolloutOptions]) -> None:
        self.task = task
        self.opts = task.options
        self.client = task.client(K8sClient.from_params)
        self.workloads: t.Dict[TargetRef, Workload] = {}
        self.steps: t.List[Result] = []
        self.diff: t.List[Result] = []
        self.records: t.Dict[str, t.Any] = {}
        self.health: t.Optional[HealthReport] = None
        self.rolled_back = False

    # -- reading --------------------------------------------------------------------------------

    def read(self, ref: TargetRef) -> Workload:
        if ref not in self.workloads:
            obj = self.client.get("apps/v1", WORKLOAD_KINDS[ref.kind], ref.name, self.opts.namespace, missing_ok=True)
            if obj is None:
                raise RunbookError("%s not found; nothing was changed" % object_ref(ref.kind, ref.name, self.opts.namespace))
            obj.setdefault("kind", ref.kind)
            self.workloads[ref] = Workload(ref.kind, obj)
        return self.workloads[ref]

    def plan(self) -> t.List[Step]:
        """The steps to run, in order (``stop`` runs them in reverse)."""
        opts = self.opts
        if opts.steps is not None:
            steps = list(opts.steps)
        else:
            steps = [Step(opts.targets if opts.targets is not None else self.selected(), opts.wait_timeout)]
        if opts.action == "stop":
            steps.reverse()
        for step in steps:
            for ref in step.targets:
                if opts.scaling and ref.kind not in SCALABLE_KINDS:
                    raise RunbookError("%s: %s cannot be scaled (action %s works on Deployments and StatefulSets)"
                                       % (ref, ref.kind, opts.action))
                self.read(ref)
        return steps

    def selected(self) -> t.List[TargetRef]:
        kinds = SCALABLE_KINDS if (self.opts.all_workloads or self.opts.scaling) else tuple(WORKLOAD_KINDS)
        found = []
        for kind in kinds:
            for obj in self.client.list("apps/v1", WORKLOAD_KINDS[kind], self.opts.namespace,
                                        label_selector=self.opts.label_selector):
                found.append(TargetRef(kind, obj["metadata"]["name"]))
        if not found:
            raise RunbookError("no %s matches %s in namespace %s" % (
                " or ".join(kinds), "label selector %r" % self.opts.label_selector if self.opts.label_selector
                else "all: true", self.opts.namespace))
        return found

    # -- permissions ----------------------------------------------------------------------------

    def may(self, verb: str, plural: str, group: str = "apps") -> bool:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"namespace": self.opts.namespace, "verb": verb, "group": group,
                                                  "resource": plural}}}
        answer = self.client.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review,
                                     what="ask the API server what these credentials may do")
        return bool((answer.get("status") or {}).get("allowed"))

    def preflight(self, steps: t.Sequence[Step]) -> None:
        """Every permission the run needs, asked before the first change."""
        if self.opts.action not in _WRITES:
            return
        needed: t.Dict[t.Tuple[str, str, str], str] = {}
        for step in steps:
            for ref in step.targets:
                needed.setdefault(("patch", "apps", WORKLOAD_KINDS[ref.kind]), str(ref))
        if self.opts.action == "stop" and self.opts.drain_seconds:
            needed.setdefault(("patch", "", "services"), "drain Services")
        if self.opts.action in ("rollback", "update"):
            for plural in ("replicasets", "controllerrevisions"):
                needed.setdefault(("list", "apps", plural), "find revisions")
        refused = ["%s %s (for %s)" % (verb, plural, why) for (verb, group, plural), why in needed.items()
                   if not self.may(verb, plural, group)]
        if refused:
            raise RunbookError("the credentials may not %s in namespace %s; nothing was changed"
                               % (", ".join(refused), self.opts.namespace))

    # -- writing --------------------------------------------------------------------------------

    def patch(self, wl: Workload, patch: t.Any, patch_type: str = "merge") -> K8sObject:
        """Patch conditionally on the resourceVersion read (a server-side dry run in check mode).

        Controllers bump the resourceVersion whenever they report status; a conflict is retried on
        the fresh object only while what the decision rested on (spec and our annotations) is as read.
        """
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                after = self.client.patch("apps/v1", wl.plural, wl.name, patch, wl.namespace, patch_type=patch_type,
                                          resource_version=wl.obj["metadata"]["resourceVersion"],
                                          dry_run=self.task.check_mode)
                break
            except K8sConflict:
                fresh = self.client.get("apps/v1", wl.plural, wl.name, wl.namespace)
                if attempt == CONFLICT_ATTEMPTS or fresh is None or _decided_on(fresh) != _decided_on(wl.obj):
                    raise
                wl.obj = fresh
        if self.task.diff:
            self.diff.append(_diff(wl, after))
        return after

    def wait(self, workloads: t.Sequence[Workload], timeout: float) -> t.Optional[str]:
        """Wait for each workload to settle; the first problem in words, None when all did."""
        if self.task.check_mode or not self.opts.wait:
            return None
        for wl in workloads:
            waited = wait_settled(self.client, wl.kind, wl.name, wl.namespace, wl.generation, timeout)
            wl.obj = waited.obj
            wl.entry.update(wait_s=waited.seconds, ready_at=_stamp() if waited.ok else None)
            if not waited.ok:
                return _timeout_message(self.client, wl, waited, timeout)
        return None

    def result(self, msg: str) -> Result:
        result: Result = {
            "changed": any(wl.entry["changed"] for wl in self.workloads.values()),
            "msg": msg,
            "targets": [wl.entry for wl in self.workloads.values()],
            "steps": self.steps,
            "health": self.health.as_result() if self.health is not None else None,
            "rolled_back": self.rolled_back,
            "record": self.records,
            "cleaned": [],
        }
        if self.diff:
            result["diff"] = self.diff
        return result


def _timeout_message(client: K8sClient, wl: Workload, waited: Waited, timeout: float) -> str:
    problems = pod_problems(client, waited.obj)
    return "%s did not finish rolling out within %gs (%s)%s" % (
        wl.ref, timeout, waited.problem, "; " + "; ".join(problems) if problems else "")


def _view(obj: K8sObject) -> Result:
    spec = obj.get("spec") or {}
    return {"replicas": spec.get("replicas"), "template": spec.get("template")}


def _diff(wl: Workload, after: K8sObject) -> Result:
    return {"before_header": wl.ref, "after_header": wl.ref, "before": _view(wl.obj), "after": _view(after)}


# ----------------------------------------------------------------------------------------------
# Steps


def _run_steps(run: Rollout, steps: t.Sequence[Step],
               act: t.Callable[[Rollout, t.List[Workload]], None],
               finish: t.Optional[t.Callable[[Rollout, t.List[Workload]], None]] = None) -> None:
    """Run ``act`` on each step's workloads, wait for them, then ``finish``; stop at the first
    failing step and name the steps not run."""
    entries: t.List[Result] = [
        {"step": i + 1, "targets": [str(ref) for ref in step.targets], "status": "not_run",
         "started_at": None, "finished_at": None, "wait_s": None} for i, step in enumerate(steps)]
    run.steps = entries
    for i, step in enumerate(steps):
        entry = entries[i]
        entry["started_at"] = _stamp()
        started = time.monotonic()
        workloads = [run.read(ref) for ref in step.targets]
        try:
            act(run, workloads)
            problem = run.wait(workloads, step.wait_timeout)
            if problem is None and finish is not None:
                finish(run, workloads)
        except RunbookError as exc:
            problem = exc.msg
        entry.update(finished_at=_stamp(), wait_s=round(time.monotonic() - started, 3))
        if problem is not None:
            entry.update(status="failed", problem=problem)
            left = [str(e["step"]) for e in entries[i + 1:]]
            raise RunbookError.keeping("step %d (%s) failed: %s%s" % (
                i + 1, ", ".join(entry["targets"]), problem,
                "; steps not run: %s" % ", ".join(left) if left else ""), run.result(""))
        entry["status"] = "done"


def _scale_act(run: Rollout, workloads: t.List[Workload]) -> None:
    replicas = t.cast(int, run.opts.replicas)
    for wl in workloads:
        if wl.replicas == replicas:
            wl.done("unchanged", wl.obj, False)
            continue
        wl.done("scaled", run.patch(wl, {"spec": {"replicas": replicas}}), True)


def _restart_act(run: Rollout, workloads: t.List[Workload]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for wl in workloads:
        patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
        wl.done("restarted", run.patch(wl, patch, "strategic"), True)


# ----------------------------------------------------------------------------------------------
# stop / start


def _hpa_of(run: Rollout, wl: Workload) -> t.Optional[K8sObject]:
    try:
        hpas = run.client.list("autoscaling/v2", "horizontalpodautoscalers", wl.namespace)
    except (K8sForbidden, K8sNotFound):
        run.task.warn("cannot read HorizontalPodAutoscalers in %s; their settings are not recorded" % wl.namespace)
        return None
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == wl.kind and ref.get("name") == wl.name:
            return hpa
    return None


def _selecting_services(run: Rollout, wl: Workload) -> t.List[K8sObject]:
    labels = (((wl.obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    found = []
    for svc in run.client.list("v1", "services", wl.namespace):
        selector = (svc.get("spec") or {}).get("selector") or {}
        if selector and DRAINED_KEY not in selector and all(labels.get(k) == v for k, v in selector.items()):
            found.append(svc)
    return found


def _drain(run: Rollout, wl: Workload, record: t.Dict[str, t.Any]) -> bool:
    """Point the Services that select ``wl`` away (a selector no Pod matches); True if any."""
    for svc in _selecting_services(run, wl):
        name = svc["metadata"]["name"]
        run.client.patch("v1", "services", name, {"spec": {"selector": {DRAINED_KEY: wl.name}}}, wl.namespace,
                         resource_version=svc["metadata"]["resourceVersion"], dry_run=run.task.check_mode)
        record.setdefault("services", []).append(name)
    return bool(record.get("services"))


def _stop_act(run: Rollout, workloads: t.List[Workload]) -> None:
    drained = False
    patches = []
    for wl in workloads:
        record = wl.stop_record
        if record is None:
            hpa = _hpa_of(run, wl)
            record = {"replicas": wl.replicas, "stopped_at": _stamp(), "services": [], "hpa": None if hpa is None else {
                "name": hpa["metadata"]["name"], "minReplicas": (hpa.get("spec") or {}).get("minReplicas"),
                "maxReplicas": (hpa.get("spec") or {}).get("maxReplicas")}}
            if run.opts.drain_seconds:
                drained = _drain(run, wl, record) or drained
            patches.append((wl, {"metadata": {"annotations": {STOP_RECORD: json.dumps(record, sort_keys=True)}},
                                 "spec": {"replicas": 0}}))
        elif wl.replicas:
            patches.append((wl, {"spec": {"replicas": 0}}))  # scaled up since: stop again, keep the first record
        run.records[wl.ref] = record
    if drained and not run.task.check_mode:
        time.sleep(run.opts.drain_seconds)  # the runbook's drain: let clients finish on the other endpoints
    for wl in workloads:
        wl.done("already_stopped", wl.obj, False)
    for wl, patch in patches:
        wl.done("stopped", run.patch(wl, patch), True)


def _start_act(run: Rollout, workloads: t.List[Workload]) -> None:
    for wl in workloads:
        record = wl.stop_record
        if record is None:
            if wl.replicas or run.opts.replicas is None:
                if not wl.replicas:
                    raise RunbookError("%s is scaled to 0 and has no %s record: give replicas to start it"
                                       % (wl.ref, STOP_RECORD))
                wl.done("already_started", wl.obj, False)
                continue
            record = {"replicas": run.opts.replicas}
        run.records[wl.ref] = record
        if wl.replicas != record["replicas"]:
            wl.done("started", run.patch(wl, {"spec": {"replicas": int(record["replicas"])}}), True)
        else:
            wl.done("started", wl.obj, False)


def _start_finish(run: Rollout, workloads: t.List[Workload]) -> None:
    """Once Ready: HPA limits and Service selectors back, then the record goes."""
    for wl in workloads:
        record = run.records.get(wl.ref)
        if record is None or wl.stop_record is None:
            continue
        hpa = record.get("hpa")
        if hpa:
            run.client.patch("autoscaling/v2", "horizontalpodautoscalers", hpa["name"],
                             {"spec": {"minReplicas": hpa["minReplicas"], "maxReplicas": hpa["maxReplicas"]}},
                             wl.namespace, dry_run=run.task.check_mode)
        for name in record.get("services") or []:
            run.client.patch("v1", "services", name, {"spec": {"selector": {DRAINED_KEY: None}}}, wl.namespace,
                             dry_run=run.task.check_mode)
        wl.done("started", run.patch(wl, {"metadata": {"annotations": {STOP_RECORD: None}}}), True)


# ----------------------------------------------------------------------------------------------
# update / rollback


def template_patch(opts: RolloutOptions, wl: Workload) -> t.Dict[str, t.Any]:
    """The strategic merge patch of the Pod template that ``images``/``env``/``resources``/``patch`` ask for."""
    containers = [c["name"] for c in ((wl.obj["spec"].get("template") or {}).get("spec") or {}).get("containers") or []]
    changes: t.Dict[str, t.Dict[str, t.Any]] = {}
    for option, values in (("images", opts.images), ("resources", opts.resources)):
        for container, value in (values or {}).items():
            if container not in containers:
                raise RunbookError("%s: %s names container %r; %s has %s" % (
                    option, option, container, wl.ref, ", ".join(containers)))
            changes.setdefault(container, {"name": container})["image" if option == "images" else "resources"] = value
    for container in containers if opts.env else []:
        changes.setdefault(container, {"name": container})["env"] = [
            {"name": key, "value": str(value)} for key, value in sorted((opts.env or {}).items())]
    template: t.Dict[str, t.Any] = json.loads(json.dumps(opts.patch or {}))
    if changes:
        template.setdefault("spec", {})["containers"] = list(changes.values())
    return template


def _rollback_to(run: Rollout, wl: Workload, number: int) -> bool:
    """Put ``wl``'s template back to revision ``number``; False when it already is there."""
    found = revisions(run.client, wl.kind, wl.obj)
    if number not in found:
        raise RunbookError("%s has no revision %d (it has %s)" % (wl.ref, number, ", ".join(map(str, sorted(found))) or "none"))
    if number == current_revision(run.client, wl.kind, wl.obj):
        return False
    patch_type, patch = revision_template_patch(wl.kind, found[number])
    wl.done("rolled_back", run.patch(wl, patch, patch_type), True)
    return True


def _update(run: Rollout, wl: Workload) -> None:
    """Record the revision, patch the template, wait, gate; roll back on failure."""
    opts = run.opts
    before = current_revision(run.client, wl.kind, wl.obj)
    wl.entry["revision"]["before"] = before
    patch: t.Dict[str, t.Any] = {"spec": {"template": template_patch(opts, wl)}}
    # A template the patch leaves as it is needs no rollout, no record and no gate. (A Deployment's
    # generation also moves on annotation changes, so it cannot tell.)
    probe = run.client.patch("apps/v1", wl.plural, wl.name, patch, wl.namespace, patch_type="strategic", dry_run=True)
    if (probe.get("spec") or {}).get("template") == (wl.obj.get("spec") or {}).get("template"):
        wl.done("unchanged", wl.obj, False)
        wl.entry["revision"]["after"] = before
        return
    if before is not None:
        patch["metadata"] = {"annotations": {UPDATE_RECORD: str(before)}}
    run.records[wl.ref] = {"revision": before}
    after = run.patch(wl, patch, "strategic")
    wl.done("updated", after, True)
    if run.task.check_mode:
        return
    problem = run.wait([wl], opts.wait_timeout)
    run.health = HealthReport(opts.health)
    if problem is not None:
        run.health.add(wait_measurement(problem))
    else:
        run_gate(run.health, run.client, [(wl.kind, wl.obj)], run.task)
    wl.entry["revision"]["after"] = current_revision(run.client, wl.kind, wl.obj)
    if run.health.status == "passed":
        return
    if run.health.status == "inconclusive" or before is None:
        raise RunbookError.keeping("health gate of %s %s: %s; not rolled back, not called a success" % (
            wl.ref, run.health.status, run.health.summary()), run.result(""))
    _rollback_to(run, wl, before)
    run.rolled_back = True
    again = run.wait([wl], opts.wait_timeout)
    wl.entry["revision"]["after"] = current_revision(run.client, wl.kind, wl.obj)
    raise RunbookError.keeping("health gate of %s failed: %s; rolled back to revision %d%s" % (
        wl.ref, run.health.summary(), before, " (the rollback did not settle either: %s)" % again if again else ""),
        run.result(""))


def _rollback(run: Rollout, wl: Workload) -> None:
    recorded = wl.annotations.get(UPDATE_RECORD)
    number = run.opts.revision if run.opts.revision is not None else int(recorded) if recorded and recorded.isdigit() else None
    if number is None:
        raise RunbookError("%s has no revision recorded by an update (annotation %s): give revision"
                           % (wl.ref, UPDATE_RECORD))
    wl.entry["revision"]["before"] = current_revision(run.client, wl.kind, wl.obj)
    run.records[wl.ref] = {"revision": number}
    if not _rollback_to(run, wl, number):
        wl.done("unchanged", wl.obj, False)
    problem = run.wait([wl], run.opts.wait_timeout)
    wl.entry["revision"]["after"] = current_revision(run.client, wl.kind, wl.obj)
    if problem is not None:
        raise RunbookError.keeping("rollback of %s: %s" % (wl.ref, problem), run.result(""))


def _status(run: Rollout, wl: Workload) -> Result:
    status = wl.obj.get("status") or {}
    wl.entry["revision"]["before"] = wl.entry["revision"]["after"] = current_revision(run.client, wl.kind, wl.obj)
    if wl.stop_record is not None:
        run.records[wl.ref] = wl.stop_record
    wl.entry["status"] = {
        "replicas": status.get("replicas", status.get("currentNumberScheduled")),
        "ready": status.get("readyReplicas", status.get("numberReady", 0)),
        "updated": status.get("updatedReplicas", status.get("updatedNumberScheduled", 0)),
        "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")} for c in status.get("conditions") or []],
        "recorded_revision": wl.annotations.get(UPDATE_RECORD),
    }
    return wl.entry


# ----------------------------------------------------------------------------------------------
# The run


_STEP_ACTIONS = {"scale": (_scale_act, None), "restart": (_restart_act, None), "stop": (_stop_act, None),
                 "start": (_start_act, _start_finish)}


# ----------------------------------------------------------------------------------------------
# cleanup


def job_failed(job: K8sObject) -> bool:
    """A Job the controller gave up on (condition ``Failed``: backoff limit, deadline, failure policy)."""
    return any(c.get("type") == "Failed" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _owner_job(pod: K8sObject) -> t.Optional[str]:
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "Job":
            return str(owner.get("name"))
    return None


def cleanup_plan(pods: t.Sequence[K8sObject], jobs: t.Sequence[K8sObject]) -> t.List[t.Tuple[str, K8sObject, str]]:
    """``(plural, object, reason)`` to delete: failed Jobs (their Pods go with them), then the finished
    Pods (Succeeded or Failed) no failed Job takes along. Objects already being deleted are left alone."""
    plan: t.List[t.Tuple[str, K8sObject, str]] = []
    failed_jobs = set()
    for job in jobs:
        meta = job.get("metadata") or {}
        if job_failed(job) and not meta.get("deletionTimestamp"):
            failed_jobs.add(meta["name"])
            reasons = [c.get("reason") for c in (job.get("status") or {}).get("conditions") or []
                       if c.get("type") == "Failed" and c.get("reason")]
            plan.append(("jobs", job, "failed Job%s" % (" (%s)" % reasons[0] if reasons else "")))
    for pod in pods:
        meta = pod.get("metadata") or {}
        phase = (pod.get("status") or {}).get("phase")
        if phase in FINISHED_PHASES and not meta.get("deletionTimestamp") and _owner_job(pod) not in failed_jobs:
            plan.append(("pods", pod, "finished Pod (phase %s)" % phase))
    return plan


def _cleanup(run: Rollout) -> Result:
    """Delete the namespace's finished Pods and failed Jobs (what ``kubectl delete pod
    --field-selector=status.phase==Succeeded`` and friends do by hand), each conditional on the
    resourceVersion read; one that changed or went away meanwhile is left alone."""
    opts = run.opts
    needed = (("pods", "", "delete pods"), ("jobs", "batch", "delete jobs"))
    refused = [what for plural, group, what in needed if not run.may("delete", plural, group)]
    if refused:
        raise RunbookError("the credentials may not %s in namespace %s; nothing was deleted"
                           % (", ".join(refused), opts.namespace))
    pods = run.client.list("v1", "pods", opts.namespace, label_selector=opts.label_selector)
    jobs = run.client.list("batch/v1", "jobs", opts.namespace, label_selector=opts.label_selector)
    cleaned: t.List[Result] = []
    for plural, obj, reason in cleanup_plan(pods, jobs):
        meta = obj["metadata"]
        api_version = "batch/v1" if plural == "jobs" else "v1"
        kind = "Job" if plural == "jobs" else "Pod"
        try:
            run.client.delete(api_version, plural, meta["name"], opts.namespace, propagation="Background",
                              resource_version=meta.get("resourceVersion"), dry_run=run.task.check_mode)
        except (K8sNotFound, K8sConflict):
            continue  # gone or changed since it was read: not ours to judge any more
        cleaned.append({"object": object_ref(kind, meta["name"], opts.namespace), "kind": kind, "reason": reason})
    result = run.result("")
    result.update(changed=bool(cleaned), cleaned=cleaned)
    jobs_done = sum(1 for entry in cleaned if entry["kind"] == "Job")
    result["msg"] = "%scleanup: %s %d finished Pod(s) and %d failed Job(s) in %s" % (
        "check mode: " if run.task.check_mode else "", "would delete" if run.task.check_mode else "deleted",
        len(cleaned) - jobs_done, jobs_done, opts.namespace)
    return result


@reports_api_requests
def run_rollout(task: Task[RolloutOptions]) -> Result:
    run = Rollout(task)
    opts = run.opts
    if opts.action == "cleanup":
        return _cleanup(run)
    steps = run.plan()
    run.preflight(steps)
    refs = [ref for step in steps for ref in step.targets]
    if opts.action == "status":
        for ref in refs:
            _status(run, run.read(ref))
        return run.result("status of %d workload(s) in %s" % (len(refs), opts.namespace))
    if opts.action in _STEP_ACTIONS:
        act, finish = _STEP_ACTIONS[opts.action]
        _run_steps(run, steps, act, finish)
        if opts.action == "restart" and opts.health.requested and not task.check_mode:
            _gate_restart(run, refs)
    else:
        for ref in refs:
            (_update if opts.action == "update" else _rollback)(run, run.read(ref))
    result = run.result("")
    changed = [e for e in result["targets"] if e["changed"]]
    result["msg"] = "%s%s: %d of %d workload(s) changed in %d step(s)%s" % (
        "check mode: " if task.check_mode else "", opts.action, len(changed), len(refs), max(1, len(steps)),
        "" if task.check_mode or not opts.wait else ", all settled")
    return result


def _gate_restart(run: Rollout, refs: t.Sequence[TargetRef]) -> None:
    run.health = HealthReport(run.opts.health)
    run_gate(run.health, run.client, [(ref.kind, run.read(ref).obj) for ref in refs], run.task)
    if run.health.status != "passed":
        raise RunbookError.keeping("health gate after the restart %s: %s" % (run.health.status, run.health.summary()),
                                   run.result(""))


CONFLICT_ATTEMPTS = 5
# Annotations a controller writes on its own (not part of what a rollout decision rests on).
_CONTROLLER_ANNOTATIONS = ("deployment.kubernetes.io/revision",)


def _decided_on(obj: K8sObject) -> t.Tuple[t.Any, t.Any]:
    """What a write decision rests on: the spec and the annotations other than the controllers' own."""
    annotations = dict((obj.get("metadata") or {}).get("annotations") or {})
    for key in _CONTROLLER_ANNOTATIONS:
        annotations.pop(key, None)
    return obj.get("spec"), annotations
