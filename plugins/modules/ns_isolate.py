#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ns_isolate
short_description: Reversibly isolate a namespace or some of its Pods during an incident, with evidence capture
version_added: 0.1.0
description:
  - With O(state=isolated), first captures evidence into the backup repository (Pod logs, the JSON of Pods,
    their owners, Services, EndpointSlices, NetworkPolicies and Events, and Secret names and keys), then
    creates a deny-all ingress and egress NetworkPolicy for the selected Pods and takes every other
    NetworkPolicy that selects them out of play, because NetworkPolicies add up and a deny-all policy
    alone does not cancel another policy's allow rule.
  - A neutralised policy keeps its rules; only its C(podSelector) changes. When the whole namespace is
    isolated it matches no Pod; with O(pod_selector) it is narrowed so that it still selects the other
    Pods but not the quarantined ones.
  - Optionally points the Services that select those Pods at nothing (O(suspend_services)), scales
    workloads to zero (O(scale_to_zero)) and labels the Pods C(runbook.ops/quarantine=<incident_id>).
  - Everything is recorded, with the original objects in full, in a ConfigMap named
    C(runbook-isolation-<incident_id>) in the namespace B(before) it is changed, and every changed object
    carries an annotation naming the incident. O(state=released) restores every policy, selector, replica
    count and label exactly, from any controller host, then deletes the deny policy and the record.
  - A failure midway undoes what the run applied. If that fails too, the record stays and
    O(state=released) completes the rollback.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: Reports every change it would make (and the diff) without changing anything or capturing evidence.
  diff_mode:
    support: full
    description: Shows the selector, replica count and label changes per object; never Secret material.
options:
  namespace:
    description: The namespace to isolate or release.
    type: str
    required: true
  state:
    description:
      - V(isolated) isolates (idempotent; Pods that appeared since are labelled and newly matching policies
        neutralised on a second run).
      - V(released) restores everything the record of O(incident_id) lists; releasing an incident that is
        not isolated changes nothing. Without O(incident_id), every incident recorded in O(namespace) is released.
    type: str
    choices: [isolated, released]
    default: isolated
  incident_id:
    description:
      - The incident, used in object names and labels; 1 to 63 lowercase letters, digits and dashes.
      - Required with O(state=isolated).
    type: str
  pod_selector:
    description:
      - Labels of the Pods to isolate (all must match). Default is every Pod of the namespace.
      - With one label, narrowed policies exclude it exactly, also for Pods created later. With several
        labels they exclude Pods labelled C(runbook.ops/quarantine), so O(label_pods) must stay V(true).
      - Keys and values must be valid Kubernetes label keys and values.
      - A new isolation whose selector matches no Pod fails before anything is captured or changed (also in
        check mode), and the message lists the values the namespace's Pods carry for these labels; see
        O(allow_empty_selector).
    type: dict
  allow_empty_selector:
    description:
      - Isolate even when O(pod_selector) matches no Pod now, so that Pods that will carry these labels are
        quarantined from their start (policies that would select them are narrowed at once). A warning says
        that nothing is matched.
      - When V(false), such a run fails and changes nothing, because during an incident a mistyped label
        would otherwise read as a quarantine while it isolates nothing.
      - Later runs of an isolation already in effect never fail for this (its Pods may have been scaled away).
    type: bool
    default: false
  allow_dns:
    description: Let the quarantined Pods reach the cluster DNS (Pods C(k8s-app=kube-dns) in C(kube-system), port 53).
    type: bool
    default: false
  allow_from_namespaces:
    description: Namespaces whose Pods may still connect to the quarantined Pods (for example a forensics namespace).
    type: list
    elements: str
    default: []
  allow_cidrs:
    description: Address ranges the quarantined Pods may still reach (egress), for example a log shipper.
    type: list
    elements: str
    default: []
  suspend_services:
    description:
      - Point every Service whose selector matches a quarantined Pod at nothing (its selector is replaced
        by one no Pod carries), so no traffic is routed to the Pods through it. The original selector is recorded.
    type: bool
    default: false
  scale_to_zero:
    description:
      - Workloads to scale to zero replicas, as C(Kind/name) with Kind V(Deployment), V(StatefulSet) or
        V(ReplicaSet). Their replica counts are recorded. Evidence is captured first; scaling destroys
        the running Pods.
    type: list
    elements: str
    default: []
  label_pods:
    description: Label the quarantined Pods C(runbook.ops/quarantine=<incident_id>).
    type: bool
    default: true
  evidence:
    description:
      - Evidence capture when a new isolation starts (not on later runs of the same incident, not in check mode,
        not when releasing). It is stored as a backup of kind C(evidence) in the repository, set O(evidence.set).
      - A failure to store the evidence fails the task before anything changes; set O(evidence.capture=false)
        to isolate without it.
    type: dict
    suboptions:
      capture:
        description: Capture evidence before the first change.
        type: bool
        default: true
      set:
        description: The backup set; default is the incident id.
        type: str
      labels:
        description: Labels recorded in the evidence manifest, besides C(incident_id) and C(namespace).
        type: dict
        default: {}
      log_tail_lines:
        description: Keep only the last N lines (at least 1) of each log; default is the whole log.
        type: int
      since:
        description: Keep only log lines younger than this duration (V(30m), V(6h), V(2d)); longer than zero.
        type: str
      log_limit_bytes:
        description: At most this many bytes (at least 1) per container log (the API server cuts the log there).
        type: int
        default: 16777216
      compression:
        description: How each file is compressed before it is encrypted and stored.
        type: str
        choices: [zstd, gzip, none]
        default: zstd
      encryption_recipients:
        description:
          - age X25519 public keys (V(age1...)) the files are encrypted to. Empty means the evidence is stored
            unencrypted, with a warning.
        type: list
        elements: str
        default: []
      repository:
        description: Where the evidence is stored, V(file:///path) or V(s3://bucket/prefix).
        type: str
        default: file:///var/backups/runbook
      s3_endpoint_url:
        description:
          - URL of an S3-compatible endpoint; empty means AWS.
          - The environment variable E(AWS_ENDPOINT_URL_S3), else E(AWS_ENDPOINT_URL), is used when this is not set.
        type: str
      region:
        description:
          - The S3 region.
          - The environment variable E(AWS_REGION), else E(AWS_DEFAULT_REGION), is used when this is not set.
        type: str
        aliases: [aws_region]
      access_key:
        description:
          - S3 access key id, given together with O(evidence.secret_key); when empty the usual AWS sources apply.
          - The environment variable E(AWS_ACCESS_KEY_ID) is used when this is not set.
        type: str
        aliases: [aws_access_key_id]
      secret_key:
        description:
          - S3 secret access key, given together with O(evidence.access_key).
          - The environment variable E(AWS_SECRET_ACCESS_KEY) is used when this is not set.
        type: str
        aliases: [aws_secret_access_key]
      session_token:
        description:
          - S3 session token.
          - The environment variable E(AWS_SESSION_TOKEN) is used when this is not set.
        type: str
        aliases: [aws_session_token]
      profile:
        description: A named profile of the AWS shared credentials files.
        type: str
        aliases: [aws_profile]
      s3_sse:
        description: Server-side encryption asked of S3 for every object.
        type: str
        choices: [none, AES256, "aws:kms"]
        default: none
      s3_kms_key_id:
        description: The KMS key for O(evidence.s3_sse=aws:kms).
        type: str
      s3_checksum:
        description: When the S3 client adds integrity checksums; V(when_required) for stores that reject them.
        type: str
        choices: [when_supported, when_required]
        default: when_supported
      validate_certs:
        description: Verify the TLS certificate of O(evidence.s3_endpoint_url).
        type: bool
        default: true
notes:
  - NetworkPolicies change traffic only with a network plugin (CNI) that enforces them; with O(state=isolated)
    the module always warns about it.
  - Pod logs come from the kubelets through the API server. A log that cannot be fetched (kubelet unreachable,
    container never started) is listed in the evidence manifest with the API server's answer; it is never
    replaced by anything made up.
  - "Permissions needed: get/list on pods, services, endpointslices, networkpolicies, events, secrets (list
    only, for key names), configmaps, and the workloads; create/update/delete on networkpolicies and
    configmaps; update on services and the scaled workloads; patch on pods; get on pods/log."
seealso:
  - module: runbook.ops.backup_repo
"""

EXAMPLES = r"""
- name: Quarantine the auth namespace, keep the forensics namespace and DNS reachable
  runbook.ops.ns_isolate:
    namespace: auth
    incident_id: inc-2026-0142
    allow_dns: true
    allow_from_namespaces: [forensics]
    evidence:
      repository: s3://incident-evidence/runbook
      encryption_recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
  register: isolation

- name: Quarantine only the token-issuer Pods and take them out of their Services
  runbook.ops.ns_isolate:
    namespace: auth
    incident_id: inc-2026-0142
    pod_selector:
      app: token-issuer
    suspend_services: true
    allow_cidrs: [10.40.0.0/24]
    evidence:
      repository: file:///var/backups/runbook
      log_tail_lines: 5000

- name: Stop a compromised worker after the evidence is stored
  runbook.ops.ns_isolate:
    namespace: auth
    incident_id: inc-2026-0142
    scale_to_zero: [Deployment/session-store]

- name: Lift the quarantine, putting every policy, selector, replica count and label back
  runbook.ops.ns_isolate:
    namespace: auth
    incident_id: inc-2026-0142
    state: released
"""

RETURN = r"""
changed:
  description: Whether anything was (in check mode, would be) changed.
  returned: always
  type: bool
msg:
  description: What the task did (or, in check mode, would do) in one sentence, or why it failed.
  returned: always
  type: str
  sample: isolated incident inc-2026-0142 in namespace auth (9 change(s))
isolated:
  description: Whether the incident is isolated after the task.
  returned: always
  type: bool
incident_id:
  description: The incident.
  returned: always
  type: str
namespace:
  description: The namespace.
  returned: always
  type: str
record:
  description: The record ConfigMap, as C(ConfigMap/<namespace>/<name>); null when releasing an incident that has none.
  returned: always
  type: str
  sample: ConfigMap/auth/runbook-isolation-inc-2026-0142
policies_created:
  description: The deny-all NetworkPolicy of the isolation (in effect, or released by this task).
  returned: always
  type: list
  elements: str
  sample: [runbook-isolate-inc-2026-0142]
policies_neutralised:
  description: NetworkPolicies taken out of play (in effect, or restored by this task when releasing).
  returned: always
  type: list
  elements: str
services_suspended:
  description: Services pointed at nothing (in effect, or restored when releasing).
  returned: always
  type: list
  elements: str
workloads_scaled:
  description: Workloads scaled to zero with their recorded replica counts.
  returned: always
  type: list
  elements: dict
  contains:
    workload:
      description: C(Kind/name).
      type: str
    replicas:
      description: The replica count before the isolation (restored on release).
      type: int
pods_labelled:
  description: Pods labelled C(runbook.ops/quarantine=<incident_id>).
  returned: always
  type: list
  elements: str
changes:
  description: What this task changed (or would change in check mode), one line per change.
  returned: always
  type: list
  elements: str
evidence:
  description: The evidence backup of the isolation; null when none was captured.
  returned: always
  type: dict
  contains:
    backup_id:
      description: The backup id in the repository.
      type: str
    kind:
      description: Always C(evidence).
      type: str
    set:
      description: The backup set.
      type: str
    repository:
      description: The repository URL (without credentials).
      type: str
    files:
      description: Number of files stored.
      type: int
    bytes:
      description: Bytes of all files before compression and encryption.
      type: int
    stored_bytes:
      description: Bytes as stored.
      type: int
    captured_at:
      description: When the capture started (UTC, ISO 8601).
      type: str
    identity:
      description: The user name the API server knows the credentials as (SelfSubjectReview), null when unknown.
      type: str
    logs_captured:
      description: Container logs stored.
      type: int
    logs_failed:
      description: Container logs that could not be fetched; each is listed in the manifest with the reason.
      type: int
    problems:
      description: Why logs or objects could not be captured.
      type: list
      elements: str
api_requests:
  description: Number of Kubernetes API requests the task sent, retries included; also when the task fails.
  returned: always
  type: int
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 2.41
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._evidence import DEFAULT_LOG_LIMIT
from ansible_collections.runbook.ops.plugins.module_utils._isolation import run_isolation
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._quarantine import IsolateOptions
from ansible_collections.runbook.ops.plugins.module_utils._repository import repository_argspec
from ansible_collections.runbook.ops.plugins.module_utils._stream import COMPRESSIONS


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    evidence = dict(
        capture=dict(type="bool", default=True),
        set=dict(type="str"),
        labels=dict(type="dict", default={}),
        log_tail_lines=dict(type="int"),
        since=dict(type="str"),
        log_limit_bytes=dict(type="int", default=DEFAULT_LOG_LIMIT),
        compression=dict(type="str", choices=list(COMPRESSIONS), default="zstd"),
        encryption_recipients=dict(type="list", elements="str", default=[]),
        **repository_argspec(),
    )
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            namespace=dict(type="str", required=True),
            state=dict(type="str", choices=["isolated", "released"], default="isolated"),
            incident_id=dict(type="str"),
            pod_selector=dict(type="dict"),
            allow_empty_selector=dict(type="bool", default=False),
            allow_dns=dict(type="bool", default=False),
            allow_from_namespaces=dict(type="list", elements="str", default=[]),
            allow_cidrs=dict(type="list", elements="str", default=[]),
            suspend_services=dict(type="bool", default=False),
            scale_to_zero=dict(type="list", elements="str", default=[]),
            label_pods=dict(type="bool", default=True),
            evidence=dict(type="dict", apply_defaults=True, options=evidence,
                          required_together=[("access_key", "secret_key")]),
        ),
        required_if=[("state", "isolated", ["incident_id"])],
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, IsolateOptions.from_params, run_isolation)


if __name__ == "__main__":
    main()
