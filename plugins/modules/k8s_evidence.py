#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_evidence
short_description: Capture a namespace's incident evidence with a chain of custody, verify it, fetch it
version_added: 0.1.0
description:
  - With O(state=captured), reads the evidence of an incident in order of volatility and stores it as a
    backup of kind C(evidence) in the backup repository, set O(set), one file per artifact
    - the Pods' specs and status (C(pods.json)), the log of every container and of its previous instance
    (C(logs__<pod>__<container>[__previous].log)), Events, NetworkPolicies, the Pods' owners, Services,
    EndpointSlices, Secret names and key names (never values), the ServiceAccounts the Pods run as with the
    RoleBindings and ClusterRoleBindings that grant them anything and the roles those reference
    (O(include_rbac)), and the facts of the Pods' nodes (O(include_nodes)).
  - Chain of custody. A C(custody.jsonl) file is kept beside the evidence. The capture writes an C(opened)
    record (the collector, from a SelfSubjectReview, plus the AWX job and user, the tool version, UTC time) and
    one C(collected) record per artifact (source object, the API request that read it, the sha256 of the bytes
    as collected and as stored, UTC time). Each record holds the sha256 of the one before it, and the
    manifest holds the sha256 of the capture records.
  - With O(state=verified) every stored object is read back and the custody re-proven (the chain, the capture
    records, the stored hashes and, when the evidence can be decrypted, the hashes as collected); a
    C(verified) record with the outcome is appended. M(runbook.ops.backup_repo) O(runbook.ops.backup_repo#module:state=verify)
    re-proves and records it the same way.
  - With O(state=fetched) the artifacts are written in plain to O(dest) (each checked against its hash as
    collected), with copies of the manifest and of the custody log, and a C(fetched) record is appended.
  - An incident is captured once per namespace; a later run returns that capture (O(force) captures again).
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
  - runbook.ops.repository
  - runbook.ops.repository.ENCRYPTION_IDENTITY
attributes:
  check_mode:
    support: full
    description: Captures nothing, writes no file and appends no custody record; reports what would be done.
  diff_mode:
    support: none
    description: Evidence is only added, never changed; there is nothing to compare.
options:
  state:
    description:
      - V(captured) captures the evidence of O(incident_id) in O(namespace) (once; see O(force)).
      - V(verified) re-proves the custody of a capture and records that access; the task fails when it does not hold.
      - V(fetched) writes a capture's artifacts into O(dest) and records that access.
    type: str
    choices: [captured, verified, fetched]
    default: captured
  namespace:
    description: The namespace whose evidence is captured. Required with O(state=captured); names the default O(set).
    type: str
  incident_id:
    description:
      - The incident; 1 to 63 lowercase letters, digits and dashes. Required with O(state=captured), recorded as a label.
      - With O(state=verified) or O(state=fetched), selects the newest capture of this incident in O(set).
    type: str
  pod_selector:
    description: Labels of the Pods whose specs, logs, ServiceAccounts and nodes are captured (all must match); default every Pod.
    type: dict
  set:
    description: The backup set; default C(<namespace>-evidence).
    type: str
  backup_id:
    description: With O(state=verified) or O(state=fetched), this capture instead of the newest one.
    type: str
  force:
    description: Capture again although this incident's evidence of O(namespace) is already in O(set) (a new backup).
    type: bool
    default: false
  labels:
    description: Labels recorded in the manifest, besides C(incident_id) and C(namespace).
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
  include_rbac:
    description: Capture the Pods' ServiceAccounts, the RoleBindings and ClusterRoleBindings naming them (or their groups) and the roles referenced.
    type: bool
    default: true
  include_nodes:
    description: Capture the Node objects of the nodes the Pods run on.
    type: bool
    default: true
  compression:
    description: How each file is compressed before it is encrypted and stored.
    type: str
    choices: [zstd, gzip, none]
    default: zstd
  encryption_recipients:
    description:
      - age X25519 public keys (V(age1...)) the files are encrypted to. Empty means the evidence is stored
        unencrypted, with a warning. The custody log itself holds only hashes and names and is not encrypted.
    type: list
    elements: str
    default: []
  collector:
    description: Who collects or accesses the evidence, besides the Kubernetes identity, recorded in every custody record.
    type: dict
    suboptions:
      awx_job_id:
        description: The AWX / Automation Controller job id; default the C(JOB_ID) environment variable AWX sets.
        type: str
      awx_user_name:
        description: The user who launched the job (AWX's C(awx_user_name) extra variable).
        type: str
      note:
        description: A free note (a ticket, a reason).
        type: str
  validate_certs:
    description:
      - Verify the TLS certificates of the Kubernetes API server and of O(s3_endpoint_url).
      - Empty means what the kubeconfig says for the API server, and verification for the repository.
      - The environment variable E(K8S_AUTH_VERIFY_SSL) is used when this is not set; AWX's Kubernetes credential
        sets it to V(False) when it holds no CA certificate, which turns verification off for the repository too.
    type: bool
    aliases: [verify_ssl]
    default: null
  dest:
    description: With O(state=fetched), the directory (on the managed host) the artifacts are written to; created 0700.
    type: path
notes:
  - Pod logs come from the kubelets through the API server. A log that cannot be fetched is listed in the manifest
    with the API server's answer (and as a V(warning) finding); nothing is ever made up.
  - "Permissions needed for O(state=captured): list on pods, events, networkpolicies, services, endpointslices,
    secrets (for key names), rolebindings and clusterrolebindings; get on pods/log, the Pods' owners,
    serviceaccounts, roles, clusterroles and nodes; create on selfsubjectreviews. An object that cannot be read is
    a V(unknown) finding and listed in the manifest."
  - Appending to C(custody.jsonl) rewrites the object whole (a rename on a file repository); two accesses at
    the very same moment may keep only one of their records.
seealso:
  - module: runbook.ops.ns_isolate
  - module: runbook.ops.backup_repo
"""

EXAMPLES = r"""
- name: Capture the evidence of the auth namespace before containing it
  runbook.ops.k8s_evidence:
    namespace: auth
    incident_id: inc-2026-0142
    repository: s3://incident-evidence/runbook
    encryption_recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
    collector:
      awx_user_name: "{{ awx_user_name | default(omit) }}"
      note: ticket SEC-1142
  register: evidence

- name: Re-prove the chain of custody (appends a verified record)
  runbook.ops.k8s_evidence:
    state: verified
    namespace: auth
    incident_id: inc-2026-0142
    repository: s3://incident-evidence/runbook
    encryption_identity: "{{ lookup('ansible.builtin.file', '/secure/evidence.key') }}"

- name: Hand the evidence to the forensics team
  runbook.ops.k8s_evidence:
    state: fetched
    set: auth-evidence
    backup_id: "{{ evidence.backup_id }}"
    repository: s3://incident-evidence/runbook
    encryption_identity: /secure/evidence.key
    dest: /srv/forensics/inc-2026-0142
"""

RETURN = r"""
changed:
  description: Whether evidence was captured or files were written to O(dest) (in check mode, would be).
  returned: always
  type: bool
msg:
  description: What the task did in one sentence, or why it failed.
  returned: always
  type: str
  sample: captured 23 artifacts of incident inc-2026-0142 in namespace auth into backup 20261206T181500.042Z-3fa91c (9 logs, 0 not readable)
backup_id:
  description: The evidence backup; null in check mode when nothing is captured yet.
  returned: always
  type: str
set:
  description: The backup set.
  returned: always
  type: str
  sample: auth-evidence
kind:
  description: Always C(evidence).
  returned: always
  type: str
incident_id:
  description: The incident the backup belongs to.
  returned: always
  type: str
namespace:
  description: The namespace captured.
  returned: when O(state=captured)
  type: str
files:
  description: The artifacts, in the order they were collected.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The file name in the backup.
      type: str
    sha256_collected:
      description: sha256 of the bytes as read from the API server.
      type: str
    sha256_stored:
      description: sha256 of the bytes as stored (compressed, encrypted).
      type: str
    size:
      description: Bytes as collected.
      type: int
    stored_size:
      description: Bytes as stored.
      type: int
    source:
      description: The object it was read from.
      type: str
      sample: Pod/auth/token-issuer-7d9 container app
    method:
      description: The API request that read it.
      type: str
      sample: GET /api/v1/namespaces/auth/pods/token-issuer-7d9/log?container=app&limitBytes=16777216&timestamps=true
    collected_at:
      description: When it was read (UTC, ISO 8601).
      type: str
identity:
  description: The Kubernetes identity that captured the evidence (SelfSubjectReview) - username, uid, groups, source.
  returned: when O(state=captured)
  type: dict
collector:
  description: Who captured it - the Kubernetes identity, AWX job id and user, local account and host, note.
  returned: when O(state=captured)
  type: dict
nodes:
  description: The nodes the captured Pods run on (the nodes a containment may cordon).
  returned: when O(state=captured)
  type: list
  elements: str
custody_records:
  description: Records in C(custody.jsonl) after the task.
  returned: always
  type: int
dest:
  description: The directory the artifacts were written to.
  returned: when O(state=fetched)
  type: str
fetched:
  description: Artifacts written to O(dest) by this task (the others were there already, with the same hash).
  returned: when O(state=fetched)
  type: list
  elements: str
verified:
  description:
    - The custody proof, in the shape every runbook.ops module returns; empty when capturing.
    - Level V(decrypt) re-proves the hashes as collected; V(checksum) only the stored bytes (encrypted, no O(encryption_identity)).
  returned: always
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup.
      type: str
    kind:
      description: Always C(evidence).
      type: str
    set:
      description: The set.
      type: str
    level:
      description: V(decrypt) or V(checksum).
      type: str
    ok:
      description: Whether the custody holds.
      type: bool
    problems:
      description: What does not hold, each naming the artifact or record.
      type: list
      elements: str
    details:
      description: The number of custody C(records).
      type: dict
findings:
  description:
    - The result as findings. V(evidence_capture) V(ok) per capture; V(evidence_log) V(warning) per log that could
      not be read; V(evidence_object) V(unknown) per object that could not be read; V(evidence_encryption) V(warning)
      when stored unencrypted; V(evidence_custody) V(ok), or V(critical) per problem.
  returned: always
  type: list
  elements: dict
  contains:
    severity:
      description: One of V(ok), V(info), V(warning), V(unknown), V(critical).
      type: str
    check:
      description: Which check produced it.
      type: str
    object:
      description: What it is about.
      type: str
      sample: Evidence/auth-evidence/20261206T181500.042Z-3fa91c
    message:
      description: What was found, for a human.
      type: str
    details:
      description: Machine-readable facts behind the message.
      type: dict
status:
  description: The worst severity among RV(findings).
  returned: always
  type: str
  sample: ok
summary:
  description: How many findings of each severity.
  returned: always
  type: dict
  sample: {ok: 1, info: 0, warning: 0, unknown: 0, critical: 0}
api_requests:
  description: Kubernetes API requests sent (0 for O(state=verified) and O(state=fetched)).
  returned: always
  type: int
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._evidence import (
    DEFAULT_LOG_LIMIT, STATES, K8sEvidenceOptions, run_k8s_evidence)
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._repository import encryption_identity_argspec, repository_argspec
from ansible_collections.runbook.ops.plugins.module_utils._stream import COMPRESSIONS


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = repository_argspec()
    spec.update(encryption_identity_argspec())
    # One validate_certs for the API server and the repository (the Kubernetes option: empty means
    # the kubeconfig's setting).
    spec.update(k8s_auth_argspec())
    return dict(
        argument_spec=dict(
            spec,
            state=dict(type="str", choices=list(STATES), default="captured"),
            namespace=dict(type="str"),
            incident_id=dict(type="str"),
            pod_selector=dict(type="dict"),
            set=dict(type="str"),
            backup_id=dict(type="str"),
            force=dict(type="bool", default=False),
            labels=dict(type="dict", default={}),
            log_tail_lines=dict(type="int"),
            since=dict(type="str"),
            log_limit_bytes=dict(type="int", default=DEFAULT_LOG_LIMIT),
            include_rbac=dict(type="bool", default=True),
            include_nodes=dict(type="bool", default=True),
            compression=dict(type="str", choices=list(COMPRESSIONS), default="zstd"),
            encryption_recipients=dict(type="list", elements="str", default=[]),
            collector=dict(type="dict", options=dict(
                awx_job_id=dict(type="str"),
                awx_user_name=dict(type="str"),
                note=dict(type="str"),
            )),
            dest=dict(type="path"),
        ),
        required_if=[("state", "captured", ("namespace", "incident_id")), ("state", "fetched", ("dest",))],
        required_one_of=[("namespace", "set")],
        required_together=[("access_key", "secret_key")],
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, K8sEvidenceOptions.from_params, run_k8s_evidence)


if __name__ == "__main__":
    main()
