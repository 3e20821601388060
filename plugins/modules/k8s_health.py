#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_health
short_description: Report what is unhealthy in a Kubernetes cluster, as findings
version_added: 0.1.0
description:
  - Reads workloads, Pods, Services and their EndpointSlices, PersistentVolumeClaims, Warning events,
    cert-manager Certificates, Jobs and Nodes, and reports each problem as a finding
    (C(severity), C(check), C(object), C(message), C(details)), the worst severity as RV(status) and a
    summary per namespace.
  - Costs one paged list per kind across all selected namespaces, whatever the number of objects;
    lists are read as raw JSON. If the credentials may not list a kind across namespaces, each selected
    namespace is listed on its own.
  - A check the credentials may not read gives an V(unknown) finding, never a failure and never V(ok).
    When the cert-manager C(Certificate) resource is not installed, the V(certificates) check does not
    apply and is listed in RV(checks_not_applicable).
  - Read-only; RV(changed) is always V(false).
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
options:
  namespaces:
    description:
      - Check only these namespaces. A name that does not exist gives a V(warning) finding.
      - Mutually exclusive with O(namespace_selector). When neither is set, every namespace not in
        O(exclude_namespaces) is checked.
    type: list
    elements: str
  namespace_selector:
    description: Check the namespaces matching this label selector, for example V(team=payments).
    type: str
  exclude_namespaces:
    description: Namespaces never checked.
    type: list
    elements: str
    default: [kube-system, kube-public, kube-node-lease]
  label_selector:
    description:
      - Check only objects with these labels (workloads, Pods, Services, PVCs, Certificates, Jobs).
        Events, EndpointSlices and Nodes are not filtered.
    type: str
  checks:
    description: Which checks to run.
    type: list
    elements: str
    choices: [workloads, pods, services, pvcs, events, certificates, jobs, nodes]
    default: [workloads, pods, services, pvcs, events, certificates, jobs, nodes]
  restart_warning:
    description: A Pod whose containers restarted at least this many times in total gets a V(warning).
    type: int
    default: 3
  pod_pending_grace:
    description: How long a Pod may stay Pending before it gets a V(warning), as a duration (V(90s), V(5m), V(1h)).
    type: str
    default: 5m
  pod_not_ready_grace:
    description: How long a Running Pod may stay not ready before it gets a V(warning).
    type: str
    default: 5m
  event_window:
    description: Warning events seen within this duration before O(now) are reported.
    type: str
    default: 1h
  cert_warning_days:
    description: A Certificate expiring within this many days gets a V(warning).
    type: float
    default: 30
  cert_critical_days:
    description: A Certificate expiring within this many days gets a V(critical) finding.
    type: float
    default: 7
  expected_objects:
    description:
      - Objects that must exist, each read with one request; a missing one is a V(critical) finding
        (check V(expected_objects)), one the credentials may not read an V(unknown) one, and when all exist one
        V(ok) finding counts them.
      - Runs whatever O(checks) says, in addition to it.
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description: The kind, for example V(Service), V(Deployment), V(Secret), V(Ingress).
        type: str
        required: true
      name:
        description: The object's name.
        type: str
        required: true
      namespace:
        description: Its namespace; empty for a cluster-scoped kind.
        type: str
      api_version:
        description:
          - Its group version, for example V(monitoring.coreos.com/v1). Needed only for kinds other than
            V(Service), V(Secret), V(ConfigMap), V(ServiceAccount), V(PersistentVolumeClaim), V(Namespace),
            V(Deployment), V(StatefulSet), V(DaemonSet), V(Job), V(CronJob), V(Ingress), V(NetworkPolicy),
            V(HorizontalPodAutoscaler) and V(Certificate).
        type: str
  fail_on:
    description:
      - Fail the task, after returning every result, when RV(status) reaches this level.
      - V(unknown) ranks above V(warning), so V(warning) also fails when something could not be checked.
    type: str
    choices: [never, warning, critical]
    default: never
  now:
    description:
      - The time to judge ages and expiry against, as ISO 8601 (V(2026-03-01T06:00:00Z)); the current
        time when not set. Makes reports reproducible.
    type: str
notes:
  - "What is reported: a Deployment, StatefulSet or DaemonSet with fewer ready replicas than desired, a
    generation its controller has not observed yet, or C(ProgressDeadlineExceeded) (V(critical) when none
    is ready, else V(warning)); Pods in C(CrashLoopBackOff), C(ImagePullBackOff), C(ErrImagePull),
    C(CreateContainerConfigError) or whose last run was C(OOMKilled) (V(critical)); Pods not ready or
    Pending past their grace period, or with at least O(restart_warning) restarts (V(warning)); a Service
    with a selector and no ready endpoint (V(critical)); a PVC Pending (V(warning)) or Lost (V(critical));
    Warning events in O(event_window) grouped by object and reason (V(info), V(warning) when repeated);
    Certificates not Ready or expired (V(critical)) or expiring within O(cert_critical_days) (V(critical))
    or O(cert_warning_days) (V(warning)); failed Jobs and CronJobs whose last finished run failed
    (V(warning)); Nodes NotReady (V(critical)) or under memory, disk or PID pressure (V(warning))."
  - A check that ran and found nothing adds one V(ok) finding with the number of objects it read.
seealso:
  - module: kubernetes.core.k8s_info
"""

EXAMPLES = r"""
- name: Daily health check of the platform namespaces
  runbook.ops.k8s_health:
    namespace_selector: platform=true
    fail_on: critical
  register: health

- name: Show what needs attention
  ansible.builtin.debug:
    msg: "{{ health.findings | rejectattr('severity', 'in', ['ok', 'info']) | map(attribute='message') | list }}"

- name: Check two namespaces with a kubeconfig context, stricter thresholds
  runbook.ops.k8s_health:
    kubeconfig: ~/.kube/config
    context: prod-eu
    namespaces: [auth, policy]
    checks: [workloads, pods, services, certificates]
    restart_warning: 1
    cert_warning_days: 45

- name: The runbook's first check - these Services exist - with the usual health checks
  runbook.ops.k8s_health:
    namespaces: [rust-security]
    expected_objects:
      - {kind: Service, name: auth-service, namespace: rust-security}
      - {kind: Service, name: policy-service, namespace: rust-security}
      - {kind: Service, name: redis, namespace: rust-security}

- name: Reproducible report (judge ages against a fixed time)
  runbook.ops.k8s_health:
    now: "2026-03-01T06:00:00Z"
  register: report

- name: Every Kubernetes module of the play shares its connection settings
  module_defaults:
    group/runbook.ops.k8s:
      host: https://k8s.example.com:6443
      api_key: "{{ lookup('ansible.builtin.env', 'K8S_TOKEN') }}"
      ca_cert: /etc/ssl/k8s-ca.pem
  block:
    - name: Check the cluster
      runbook.ops.k8s_health:
        fail_on: warning
"""

RETURN = r"""
changed:
  description: Always V(false); the module only reads.
  returned: always
  type: bool
  sample: false
msg:
  description:
    - The verdict in one sentence, with the number of findings per severity that needs attention.
    - When O(fail_on) is reached, why the task failed; every other field is still returned.
  returned: always
  type: str
  sample: "cluster health is critical: 3 critical, 2 warning (2 namespace(s), checks: workloads, pods)"
status:
  description: The worst severity among the findings (V(ok), V(info), V(warning), V(unknown), V(critical)).
  returned: always
  type: str
  sample: critical
summary:
  description: The number of findings per severity.
  returned: always
  type: dict
  sample: {ok: 5, info: 1, warning: 2, unknown: 0, critical: 3}
findings:
  description: What was found, worst first.
  returned: always
  type: list
  elements: dict
  contains:
    severity:
      description: V(ok), V(info), V(warning), V(unknown) (could not be checked) or V(critical).
      type: str
      sample: critical
    check:
      description: >-
        The check that produced it: V(workloads), V(pods), V(services), V(pvcs), V(events),
        V(certificates), V(jobs), V(nodes), V(expected_objects) (O(expected_objects)), or V(namespaces) (a
        namespace could not be listed or found).
      type: str
      sample: pods
    object:
      description: >-
        The object, as C(Kind/namespace/name); C(plural/namespace/*) for a list that could not be read;
        V(*) for a check's V(ok) finding.
      type: str
      sample: Pod/auth/auth-worker-7d9c
    message:
      description: What is wrong, for people.
      type: str
      sample: "container worker: CrashLoopBackOff (back-off 5m0s restarting failed container); 12 restarts (threshold 3)"
    details:
      description: >-
        Facts for automation, depending on the check: C(namespace), C(reasons), C(phase), C(restarts),
        C(ready), C(desired), C(days_left), C(not_after), C(count), C(last_seen), C(status) (HTTP status of
        a refused list), C(objects) (objects read, on V(ok) findings).
      type: dict
      sample: {namespace: auth, reasons: [CrashLoopBackOff, Restarts], phase: Running, restarts: 12, ready: false}
namespaces:
  description: Per checked namespace, its worst severity and counts.
  returned: always
  type: dict
  sample:
    auth:
      status: critical
      workloads: {ready: 3, total: 3}
      pods: {running: 5, ready: 4, total: 5, restarts: 12}
      services_without_endpoints: [auth-worker]
  contains:
    status:
      description: The worst severity of the findings about objects in this namespace.
      type: str
    workloads:
      description: Deployments, StatefulSets and DaemonSets, C(ready) (all replicas ready) and C(total).
      type: dict
    pods:
      description: Pods C(running) (phase Running), C(ready), C(total), and C(restarts) (sum of container restarts).
      type: dict
    services_without_endpoints:
      description: Names of Services with a selector and no ready endpoint.
      type: list
      elements: str
checks_run:
  description: The checks that ran (wholly or for the namespaces the credentials may read).
  returned: always
  type: list
  elements: str
  sample: [workloads, pods, services, pvcs, events, certificates, jobs, nodes]
checks_not_applicable:
  description: Checks whose resource the API server does not serve, such as V(certificates) without cert-manager.
  returned: always
  type: list
  elements: str
  sample: []
checked_at:
  description: The time findings were judged against (O(now) or the current time), UTC.
  returned: always
  type: str
  sample: "2026-03-01T06:00:00Z"
api_requests:
  description: How many HTTP requests were sent to the API server, retries included; also when the task fails.
  returned: always
  type: int
  sample: 12
duration_s:
  description: Seconds the check took.
  returned: always
  type: float
  sample: 0.42
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._findings import FAIL_ON_CHOICES
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._k8s_health import (
    CHECKS, DEFAULT_EXCLUDE, HealthOptions, run_health,
)


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            namespaces=dict(type="list", elements="str"),
            namespace_selector=dict(type="str"),
            exclude_namespaces=dict(type="list", elements="str", default=list(DEFAULT_EXCLUDE)),
            label_selector=dict(type="str"),
            checks=dict(type="list", elements="str", choices=list(CHECKS), default=list(CHECKS)),
            restart_warning=dict(type="int", default=3),
            pod_pending_grace=dict(type="str", default="5m"),
            pod_not_ready_grace=dict(type="str", default="5m"),
            event_window=dict(type="str", default="1h"),
            cert_warning_days=dict(type="float", default=30),
            cert_critical_days=dict(type="float", default=7),
            expected_objects=dict(type="list", elements="dict", default=[], options=dict(
                kind=dict(type="str", required=True), name=dict(type="str", required=True),
                namespace=dict(type="str"), api_version=dict(type="str"))),
            fail_on=dict(type="str", choices=list(FAIL_ON_CHOICES), default="never"),
            now=dict(type="str"),
        ),
        mutually_exclusive=[("namespaces", "namespace_selector")],
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, HealthOptions.from_params, run_health)


if __name__ == "__main__":
    main()
