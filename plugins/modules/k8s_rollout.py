#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_rollout
short_description: Start and stop workloads in order, restart, scale, update with a health gate, roll back
version_added: 0.1.0
description:
  - Acts on Deployments, StatefulSets and DaemonSets of one namespace, in ordered O(steps) when
    asked, and waits for each step to settle before the next begins.
  - "Waiting watches the workload (the list endpoint with C(watch=true) from the resourceVersion just
    read), so it ends as soon as the controller reports: observedGeneration caught up, updated, ready
    and available replicas equal to the desired count, none left over or unavailable; for StatefulSets
    also C(currentRevision == updateRevision). C(ProgressDeadlineExceeded) fails at once; a failure
    names the Pods' waiting reasons (C(CrashLoopBackOff), C(ImagePullBackOff), ...)."
  - The permissions the run needs are asked from the API server (SelfSubjectAccessReview) before
    anything changes. Every write is a patch conditional on the resourceVersion read.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: Every patch is sent as a server-side dry run; nothing is waited for; RV(targets) shows what would change.
  diff_mode:
    support: full
    description: Replicas and Pod template before and after, per patched workload.
options:
  namespace:
    description: Namespace of the workloads.
    type: str
    required: true
  action:
    description:
      - V(restart) stamps the Pod template (C(kubectl.kubernetes.io/restartedAt)) and waits for the rollout.
      - V(scale) sets O(replicas).
      - V(stop) records each target's replicas (and its HorizontalPodAutoscaler's min and max) in the
        annotation C(runbook.ops/stopped), then scales it to 0. With O(drain_seconds), the Services
        selecting it are first pointed away and the module waits that long. A second V(stop) keeps the
        first record.
      - V(start) restores exactly the recorded replicas, HPA limits and Service selectors, then removes
        the record. A workload without a record that runs is left alone; one at 0 needs O(replicas).
      - V(update) changes the Pod template (O(images), O(env), O(resources), O(patch)), records the
        revision it started from in the annotation C(runbook.ops/pre-update-revision), waits and runs
        the O(health) gate; a failure rolls back to the recorded revision and fails.
      - V(rollback) goes to O(revision) or to the revision recorded by the last V(update) (never
        blindly the previous one), through ReplicaSets (Deployments) or ControllerRevisions (StatefulSets,
        DaemonSets); the workload's other annotations are kept.
      - V(status) only reads (revisions, replicas, conditions and records).
      - V(cleanup) deletes the namespace's finished Pods (phase C(Succeeded) or C(Failed)) and its failed Jobs
        (condition C(Failed); their Pods go with them), narrowed by O(label_selector); each delete is conditional
        on the resourceVersion read. Running Pods, active and succeeded Jobs are left alone. It takes no
        O(targets), O(all) or O(steps).
    type: str
    required: true
    choices: [restart, scale, stop, start, update, rollback, status, cleanup]
  targets:
    description:
      - Workloads as C(Kind/name), for example V(Deployment/auth-service) or V(sts/redis-master).
      - V(scale), V(stop) and V(start) work on Deployments and StatefulSets.
    type: list
    elements: str
  label_selector:
    description:
      - The workloads matching this label selector (Deployments and StatefulSets for scaling actions).
      - For V(cleanup), the Pods and Jobs it considers.
    type: str
  all:
    description: >-
      Every Deployment and StatefulSet in the namespace (one of O(targets), O(label_selector), O(all), O(steps) is
      required, except for V(cleanup)).
    type: bool
  steps:
    description:
      - Ordered groups of targets. Each step starts when the previous one settled; V(stop) runs them
        in reverse. The run stops at the first failing step and names the steps not run.
    type: list
    elements: dict
    suboptions:
      targets:
        description: Workloads of this step, as C(Kind/name).
        type: list
        elements: str
        required: true
      wait_timeout:
        description: How long this step may take to settle (default O(wait_timeout)).
        type: str
  replicas:
    description: Replicas for V(scale); for V(start), the count of a workload stopped without a record.
    type: int
  drain_seconds:
    description: V(stop) only. Point the Services selecting each target away, then wait this many seconds before scaling down.
    type: int
    default: 0
  wait:
    description: Wait for every change to settle (and run the health gate). Without it, V(update) cannot be gated.
    type: bool
    default: true
  wait_timeout:
    description: How long each step (or each update) may take to settle, as a duration (V(90s), V(5m)).
    type: str
    default: 5m
  images:
    description: V(update). New image per container name.
    type: dict
  env:
    description: V(update). Environment variables set in every container of the template.
    type: dict
  resources:
    description: V(update). New C(resources) (C(requests), C(limits)) per container name.
    type: dict
  patch:
    description: V(update). A strategic merge patch of the Pod template (C(metadata), C(spec)).
    type: dict
  revision:
    description: V(rollback). The revision to go back to (the C(deployment.kubernetes.io/revision) of a ReplicaSet or a ControllerRevision's number).
    type: int
  health:
    description:
      - The gate run after V(update) and, when it asks for more than readiness, after V(restart).
      - Each sample measures readiness (always), the O(health.http) checks, and with
        O(health.k8s_health) the k8s_health findings of the targets and their Pods.
      - A check without an answer is no data. No data is inconclusive, never success; the module
        stops and fails without rolling back. O(health.failure_limit) failed samples roll an update back.
    type: dict
    default: {}
    suboptions:
      samples:
        description: Measurements to take.
        type: int
        default: 1
      interval:
        description: Time between measurements, as a duration.
        type: str
        default: 5s
      failure_limit:
        description: Failed samples that fail the gate.
        type: int
        default: 1
      k8s_health:
        description: Count warning or critical k8s_health findings on the targets (and their Pods) as failures.
        type: bool
        default: false
      http:
        description:
          - HTTP GET checks. An C(http://<service>.<namespace>.svc[.cluster.local]) URL is reached
            through the Kubernetes tunnel (a port-forward through the API server); other URLs directly.
        type: list
        elements: dict
        default: []
        suboptions:
          url:
            description: The URL to GET.
            type: str
            required: true
          status:
            description: The expected HTTP status.
            type: int
            default: 200
          timeout:
            description: How long to wait for an answer, as a duration.
            type: str
            default: 5s
notes:
  - The Services a V(stop) drains get the selector key C(runbook.ops/drained); V(start) removes it once
    the workload is ready again.
seealso:
  - module: runbook.ops.k8s_node
  - module: runbook.ops.k8s_health
"""

EXAMPLES = r"""
- name: Start the platform in order, each step Ready before the next
  runbook.ops.k8s_rollout:
    namespace: rust-security
    action: start
    steps:
      - targets: [StatefulSet/redis-master]
      - targets: [Deployment/policy-service]
      - targets: [Deployment/auth-service]
        wait_timeout: 2m

- name: Shut it down in reverse, draining the Services for 30 seconds first
  runbook.ops.k8s_rollout:
    namespace: rust-security
    action: stop
    drain_seconds: 30
    steps:
      - targets: [StatefulSet/redis-master]
      - targets: [Deployment/policy-service]
      - targets: [Deployment/auth-service]

- name: Emergency - everything to zero (start restores the recorded counts)
  runbook.ops.k8s_rollout:
    namespace: rust-security
    action: stop
    all: true

- name: Restart after a secret change
  runbook.ops.k8s_rollout:
    namespace: rust-security
    action: restart
    targets: [Deployment/auth-service]

- name: New image, gated by health, rolled back automatically on failure
  runbook.ops.k8s_rollout:
    namespace: rust-security
    action: update
    targets: [Deployment/auth-service]
    images:
      auth-service: registry.example.com/auth-service:2.4.1
    health:
      samples: 5
      interval: 10s
      failure_limit: 2
      k8s_health: true
      http:
        - url: http://auth-service.rust-security.svc:8080/health

- name: Maintenance window - remove finished Pods and failed Jobs
  runbook.ops.k8s_rollout:
    namespace: rust-security
    action: cleanup
  register: cleanup

- name: What is running and what was recorded
  runbook.ops.k8s_rollout:
    namespace: rust-security
    action: status
    all: true
  register: rollout_status
"""

RETURN = r"""
changed:
  description: Whether any workload was (or in check mode would be) changed.
  returned: always
  type: bool
  sample: true
msg:
  description: What was done in one sentence; on failure, which step or gate failed and why.
  returned: always
  type: str
  sample: "start: 3 of 3 workload(s) changed in 3 step(s), all settled"
targets:
  description: One entry per workload, in the order they were met.
  returned: always
  type: list
  elements: dict
  contains:
    object:
      description: C(Kind/namespace/name).
      type: str
      sample: Deployment/rust-security/auth-service
    kind:
      description: V(Deployment), V(StatefulSet) or V(DaemonSet).
      type: str
    name:
      description: The workload's name.
      type: str
    action:
      description: >-
        What was done: V(scaled), V(restarted), V(stopped), V(already_stopped), V(started),
        V(already_started), V(updated), V(rolled_back), V(unchanged), V(none).
      type: str
      sample: started
    changed:
      description: Whether this workload was changed.
      type: bool
    replicas:
      description: C(before) and C(after) desired replicas (null for DaemonSets).
      type: dict
      sample: {before: 0, after: 3}
    revision:
      description: C(before) and C(after) revision (update, rollback, status).
      type: dict
      sample: {before: 3, after: 4}
    wait_s:
      description: Seconds waited for this workload to settle (null when not waited for).
      type: float
    ready_at:
      description: When it was seen settled, UTC with milliseconds (null when not waited for).
      type: str
      sample: "2026-03-01T06:00:01.234Z"
    status:
      description: V(status) only. C(replicas), C(ready), C(updated), C(conditions), C(recorded_revision).
      type: dict
steps:
  description: One entry per step, in the order run.
  returned: always
  type: list
  elements: dict
  contains:
    step:
      description: Its number, from 1, in run order.
      type: int
    targets:
      description: Its targets.
      type: list
      elements: str
    status:
      description: V(done), V(failed) or V(not_run).
      type: str
    started_at:
      description: When it began (UTC, milliseconds).
      type: str
    finished_at:
      description: When it settled or failed (UTC, milliseconds).
      type: str
    wait_s:
      description: Seconds from its start to its end.
      type: float
    problem:
      description: Why it failed (failed steps only).
      type: str
health:
  description: The health gate's measurements (null when no gate ran).
  returned: always
  type: dict
  contains:
    status:
      description: V(passed), V(failed) or V(inconclusive) (a check had no data).
      type: str
    failure_limit:
      description: Failed samples that fail the gate.
      type: int
    samples:
      description: >-
        Each sample, C(at) (time), C(ok) (true, false, or null for no data) and C(checks): C(check)
        (V(readiness), V(http), V(k8s_health)), C(target), C(ok), C(detail), C(status) (HTTP).
      type: list
      elements: dict
rolled_back:
  description: Whether a failed gate rolled an update back.
  returned: always
  type: bool
  sample: false
record:
  description: >-
    Per workload (C(Kind/namespace/name)), the record written, restored or read: for stop and start
    C(replicas), C(hpa), C(services), C(stopped_at); for update and rollback C(revision).
  returned: always
  type: dict
  sample: {"Deployment/rust-security/auth-service": {replicas: 3, hpa: null, services: [], stopped_at: "2026-03-01T06:00:01.234Z"}}
cleaned:
  description: V(cleanup). What was deleted (in check mode, would be), in the order deleted.
  returned: always
  type: list
  elements: dict
  contains:
    object:
      description: C(Pod/namespace/name) or C(Job/namespace/name).
      type: str
      sample: Job/rust-security/nightly-export-29120
    kind:
      description: V(Pod) or V(Job).
      type: str
    reason:
      description: Why, for example V(finished Pod (phase Succeeded)) or V(failed Job (BackoffLimitExceeded)).
      type: str
api_requests:
  description: HTTP requests sent to the API server (watches included); also when the task fails.
  returned: always
  type: int
  sample: 14
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 4.2
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._k8s_rollout import (
    ACTIONS, WORKLOAD_ACTIONS, RolloutOptions, run_rollout,
)


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    http = dict(url=dict(type="str", required=True), status=dict(type="int", default=200),
                timeout=dict(type="str", default="5s"))
    health = dict(samples=dict(type="int", default=1), interval=dict(type="str", default="5s"),
                  failure_limit=dict(type="int", default=1), k8s_health=dict(type="bool", default=False),
                  http=dict(type="list", elements="dict", default=[], options=http))
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            namespace=dict(type="str", required=True),
            action=dict(type="str", required=True, choices=list(ACTIONS)),
            targets=dict(type="list", elements="str"),
            label_selector=dict(type="str"),
            all=dict(type="bool"),
            steps=dict(type="list", elements="dict", options=dict(
                targets=dict(type="list", elements="str", required=True), wait_timeout=dict(type="str"))),
            replicas=dict(type="int"),
            drain_seconds=dict(type="int", default=0),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="str", default="5m"),
            images=dict(type="dict"),
            env=dict(type="dict"),
            resources=dict(type="dict"),
            patch=dict(type="dict"),
            revision=dict(type="int"),
            health=dict(type="dict", default={}, options=health),
        ),
        mutually_exclusive=[("targets", "label_selector", "all", "steps")],
        # Every action but cleanup acts on named or selected workloads.
        required_if=[("action", action, ("targets", "label_selector", "all", "steps"), True) for action in WORKLOAD_ACTIONS]
        + [("action", "scale", ("replicas",)), ("action", "update", ("images", "env", "resources", "patch"), True)],
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, RolloutOptions.from_params, run_rollout)


if __name__ == "__main__":
    main()
