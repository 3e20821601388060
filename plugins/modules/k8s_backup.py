#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_backup
short_description: Back up, restore and compare Kubernetes namespaces through the backup repository
version_added: 0.2.0
description:
  - V(backup) reads every object of the selected namespaces (one paged list per kind, whatever the number
    of namespaces), strips what the API server sets (C(uid), C(resourceVersion), C(generation),
    C(creationTimestamp), C(managedFields), C(selfLink), C(status); the C(kubectl.kubernetes.io/last-applied-configuration)
    annotation is kept) and stores them as one compressed, encrypted object in the repository (kind C(kubernetes)).
  - The manifest records per kind the count and the resourceVersion of its list, per object the sha256 of
    its stored line, the API server version, and every kind that could not be read and why; such a backup
    is partial, the task warns, and M(runbook.ops.backup_repo_info) flags it.
  - V(restore) proves the whole backup against its manifest first (decryption and every object's sha256), then
    restores in Velero's order (CustomResourceDefinitions, waiting until they are Established, Namespaces,
    StorageClasses, PersistentVolumes, PersistentVolumeClaims, Secrets, ConfigMaps, ServiceAccounts, LimitRanges,
    ResourceQuotas, RBAC, NetworkPolicies, Services, workloads, then custom resources) with bounded parallel
    requests. An object that exists and is identical to the backup is never written, so a second restore
    changes nothing and a rerun after an interruption only does what is left.
  - V(diff) compares the live state with a backup - objects added, removed and changed since (with a JSON-patch
    summary); Secret values are masked.
  - Secret values never appear in any output, diff or RV(objects) entry.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
  - runbook.ops.repository
  - runbook.ops.repository.ENCRYPTION_IDENTITY
  - runbook.ops.repository.BACKUP_JOB
  - runbook.ops.repository.RETENTION
  - runbook.ops.encryption
attributes:
  check_mode:
    support: full
    description:
      - V(backup) reads the cluster and reports what it would store; nothing is written to the repository.
      - V(restore) reads and proves the backup, then sends every write as a server-side dry run, so admission
        and validation errors show without anything being written. Objects in a namespace (or of a
        CustomResourceDefinition) the restore would create first cannot be validated by the API server; their
        entries say so.
      - V(diff) only reads.
  diff_mode:
    support: full
    description:
      - V(backup) shows the latest backup id of the set before and after.
      - V(restore) shows each object created or updated, before and after (Secret values masked).
options:
  state:
    description: What to do.
    type: str
    choices: [backup, restore, diff]
    default: backup
  namespaces:
    description:
      - V(backup) these namespaces. For V(restore) and V(diff), only the objects of these namespaces of the backup
        (the source names, before O(namespace_mapping)); empty means every namespace of the backup.
      - Mutually exclusive with O(namespace_selector).
    type: list
    elements: str
  namespace_selector:
    description:
      - V(backup) the namespaces matching this label selector (for example V(team=payments)); needs O(set).
    type: str
  kinds:
    description:
      - Only these kinds, by C(Kind), plural, C(plural.group) or C(apiVersion/Kind) (V(Deployment), V(ingresses),
        V(widgets.example.com)).
      - Empty means, for V(backup), every namespaced kind that discovery says can be listed and created, minus
        Events, Endpoints, EndpointSlices and Leases; Pods, ReplicaSets and ControllerRevisions owned by a
        controller (finished Jobs' Pods included) and the C(kube-root-ca.crt) ConfigMap are left out too.
        For V(restore) and V(diff), empty means every kind of the backup.
    type: list
    elements: str
    default: []
  exclude_kinds:
    description:
      - Kinds never backed up, named as in O(kinds).
      - For V(restore), kinds of the backup left out of this restore (a restore in stages restores the
        configuration first and the workloads after the data).
    type: list
    elements: str
    default: []
  label_selector:
    description: V(backup) only the namespaced objects with these labels.
    type: str
  include_cluster_resources:
    description:
      - With V(backup), also store the cluster-scoped objects the namespaces need - their Namespace objects,
        the CustomResourceDefinitions of the custom resources stored, the ClusterRoleBindings whose subjects are in
        the namespaces and the ClusterRoles they bind, and the PersistentVolumes bound to the claims stored.
    type: bool
    default: true
  allow_unencrypted_secrets:
    description:
      - A backup that would hold Secrets is refused when O(encryption_recipients) is empty, unless this is true.
    type: bool
    default: false
  backup_id:
    description: For V(restore) and V(diff), the backup to use; empty means the latest complete backup of the set.
    type: str
  namespace_mapping:
    description:
      - For V(restore) and V(diff), restore (or compare) namespace C(key) as namespace C(value), e.g.
        V(rust-security) mapped to V(rust-security-drill) for a restore drill next to the live namespace.
      - Binding subjects and PersistentVolume claims in a mapped namespace are mapped too.
    type: dict
    default: {}
  existing:
    description:
      - What V(restore) does with an object that exists and differs from the backup (an identical one is
        always left alone and reported V(skipped)).
      - V(skip) never overwrites (Velero's C(none)); the entry is V(skipped) and says that it differs.
      - V(update) replaces it with the backup's version (conditional on the resourceVersion read).
      - V(recreate) deletes it and creates it from the backup.
    type: str
    choices: [skip, update, recreate]
    default: skip
  preserve_node_ports:
    description:
      - Keep the node ports of Services at V(restore). By default they are removed, as are the cluster IPs of
        Services that are not headless, and the API server allocates new ones.
    type: bool
    default: false
  parallel:
    description:
      - Concurrent API requests of V(restore) (one connection each), from 1 to 64.
      - V(backup) and V(diff) read at most 4 kinds at a time, and never more than this.
    type: int
    default: 8
  validate_certs:
    description:
      - Verify the TLS certificates of the Kubernetes API server and of O(s3_endpoint_url).
      - Empty means what the kubeconfig says for the API server, and verification for the repository.
      - The environment variable E(K8S_AUTH_VERIFY_SSL) is used when this is not set; AWX's Kubernetes credential
        sets it to V(False) when it holds no CA certificate, which turns verification off for the repository too.
    type: bool
    aliases: [verify_ssl]
    default: null
notes:
  - Restore strips what must not be replayed - the cluster IPs of non-headless Services, node ports (unless
    O(preserve_node_ports)), a Job's generated selector - and points owner references at the owners restored
    (or drops them when the owner is not there).
  - A PersistentVolumeClaim bound to a volume that still holds an old claim stays Pending after a restore, as with Velero.
seealso:
  - module: runbook.ops.backup_repo_info
  - module: runbook.ops.backup_repo
"""

EXAMPLES = r"""
- name: Back up two platforms' namespaces, encrypted, keeping 14 daily backups
  runbook.ops.k8s_backup:
    namespaces: [rust-security, personapass]
    repository: s3://backups/platform
    encryption_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    max_age: 6h
    retention:
      keep_daily: 14

- name: What changed since the last backup (the pre-change checklist)
  runbook.ops.k8s_backup:
    state: diff
    namespaces: [rust-security]
    set: rust-security+personapass
    repository: s3://backups/platform
    encryption_identity: /etc/runbook/age-identity.txt
  register: drift

- name: Restore drill into a new namespace, checked first with a server-side dry run
  runbook.ops.k8s_backup:
    state: restore
    namespaces: [rust-security]
    set: rust-security+personapass
    namespace_mapping:
      rust-security: rust-security-drill
    repository: s3://backups/platform
    encryption_identity: /etc/runbook/age-identity.txt
  check_mode: true

- name: Bring changed objects back to the backup's state
  runbook.ops.k8s_backup:
    state: restore
    namespaces: [rust-security, personapass]
    existing: update
    repository: s3://backups/platform
    encryption_identity: /etc/runbook/age-identity.txt
"""

RETURN = r"""
backup_id:
  description: The backup written (V(backup)), restored or compared; for a skipped backup, the fresh one found.
  returned: always
  type: str
  sample: 20260131T120000.042Z-3fa9c1
manifest:
  description:
    - The backup's manifest, with C(kubernetes.kinds) (per C(apiVersion/Kind) its plural, count and list
      resourceVersion), C(kubernetes.objects) (sha256 per object), C(kubernetes.server_version),
      C(kubernetes.unreadable) and C(kubernetes.partial).
  returned: when a backup was found or written
  type: dict
backup:
  description: A short summary of the backup written or found (id, set, sizes, encryption).
  returned: when O(state=backup)
  type: dict
counts:
  description:
    - Objects per C(apiVersion/Kind) - stored (V(backup)), restored or considered (V(restore)), differing (V(diff)).
  returned: always
  type: dict
  sample: {"apps/v1/Deployment": 4, "v1/Secret": 2}
objects:
  description:
    - One entry per object restored (V(restore)) or differing from the backup (V(diff)); empty for V(backup).
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: The object's kind.
      type: str
    api_version:
      description: The object's apiVersion.
      type: str
    namespace:
      description: Its namespace (after O(namespace_mapping)); null for a cluster-scoped object.
      type: str
    name:
      description: Its name.
      type: str
    action:
      description:
        - V(restore) - V(created), V(updated), V(skipped), V(failed), V(would_create) or V(would_update).
        - V(diff) - V(added) (in the cluster, not in the backup), V(removed) or V(changed).
      type: str
    reason:
      description: Why, in words; for V(failed), the API server's answer (naming a missing CRD).
      type: str
    patch:
      description: For V(changed), the JSON-patch operations from the backup to the live object (Secret values masked).
      type: list
      elements: dict
unreadable:
  description:
    - Kinds the credentials could not read, each C(kind), C(namespace) (null when cluster-wide), C(status) and C(reason).
      Not empty means the backup is partial.
  returned: always
  type: list
  elements: dict
status:
  description:
    - V(ok); V(warning) for a partial backup; V(info) when V(diff) found differences; V(critical) when an object
      failed to restore (never V(ok) then).
  returned: always
  type: str
skipped:
  description: True when O(max_age) found a fresh enough backup and nothing was done.
  returned: only then (never false; Ansible shows the task as skipped)
  type: bool
pruned:
  description: Backups removed by O(retention) after a successful backup (empty unless O(state=backup)).
  returned: always
  type: list
  elements: dict
verified:
  description: For V(restore), the proof of the backup read (every object's sha256 against the manifest).
  returned: when O(state=restore)
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup verified.
      type: str
    kind:
      description: Always V(kubernetes).
      type: str
    set:
      description: The backup set.
      type: str
    level:
      description: Always V(checksum) (stored bytes, decryption and every object's sha256).
      type: str
    ok:
      description: True when no problem was found (a failed proof fails the task before anything is written).
      type: bool
    problems:
      description: What is wrong.
      type: list
      elements: str
    details:
      description: C(objects), the number of objects proven.
      type: dict
throughput_mib_s:
  description: Uncompressed MiB stored per second of the task (V(backup); 0 in check mode and for a skipped backup).
  returned: when O(state=backup)
  type: float
diff:
  description: With C(--diff) only; see the diff_mode attribute.
  returned: when run with C(--diff) and O(state=backup) or O(state=restore)
  type: raw
api_requests:
  description: How many HTTP requests were sent to the API server, retries and restore workers included; also when the task fails.
  returned: always
  type: int
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
msg:
  description: What was done (or, in check mode, would be done), in words; on failure, what failed and why.
  returned: always
  type: str
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import backup_job_argspec
from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._k8s_backup import K8sBackupOptions, run_k8s_backup


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = backup_job_argspec()
    # One validate_certs for the API server and the repository (the Kubernetes option: empty
    # means the kubeconfig's setting).
    spec.update(k8s_auth_argspec())
    spec.update(
        state=dict(type="str", choices=["backup", "restore", "diff"], default="backup"),
        namespaces=dict(type="list", elements="str"),
        namespace_selector=dict(type="str"),
        kinds=dict(type="list", elements="str", default=[]),
        exclude_kinds=dict(type="list", elements="str", default=[]),
        label_selector=dict(type="str"),
        include_cluster_resources=dict(type="bool", default=True),
        allow_unencrypted_secrets=dict(type="bool", default=False),
        backup_id=dict(type="str"),
        namespace_mapping=dict(type="dict", default={}),
        existing=dict(type="str", choices=["skip", "update", "recreate"], default="skip"),
        preserve_node_ports=dict(type="bool", default=False),
        parallel=dict(type="int", default=8),
    )
    return dict(
        argument_spec=spec,
        mutually_exclusive=[("namespaces", "namespace_selector")],
        required_if=[("state", "backup", ("namespaces", "namespace_selector"), True),
                     ("state", "restore", ("namespaces", "set"), True),
                     ("state", "diff", ("namespaces", "set"), True)],
        required_by={"namespace_selector": ("set",)},
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, K8sBackupOptions.from_params, run_k8s_backup)


if __name__ == "__main__":
    main()
