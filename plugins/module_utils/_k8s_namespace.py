# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Namespaces a job owns for a while (a restore drill's scratch copies): created with an owner
label, and deleted only when they carry that label with the same value.

The label is the safety: a mistaken name (a production namespace) is refused untouched, by
``present`` as well as by ``absent``, because nothing the job did not create carries its owner.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task, options_from
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sObject, reports_api_requests
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    check_params, duration, k8s_namespace, label_value, labels as label_map)

OWNER_LABEL = "runbook.ops/owner"
STATES = ("present", "absent")


@dataclasses.dataclass(frozen=True)
class NamespaceOptions:
    names: t.List[str]
    owner: str
    state: str
    labels: t.Dict[str, str]
    wait: bool
    wait_timeout: float

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "NamespaceOptions":
        check_params(params, {"owner": label_value})
        if not params["owner"]:
            raise RunbookError("owner is empty; it must name who owns these namespaces (a label value)")
        names = [k8s_namespace("names[%d]" % i, name) for i, name in enumerate(params["names"])]
        extra = label_map("labels", params["labels"])
        if OWNER_LABEL in extra:
            raise RunbookError("labels must not set %s; it is the option owner" % OWNER_LABEL)
        return options_from(cls, params, names=names, labels=extra,
                            wait_timeout=duration("wait_timeout", params["wait_timeout"], 1, 86400))


def _owner_of(namespace: t.Optional[K8sObject]) -> t.Optional[str]:
    if namespace is None:
        return None
    return ((namespace.get("metadata") or {}).get("labels") or {}).get(OWNER_LABEL)


def _refuse_foreign(name: str, namespace: K8sObject, owner: str) -> None:
    found = _owner_of(namespace)
    if found != owner:
        who = "no %s label" % OWNER_LABEL if found is None else "%s=%s" % (OWNER_LABEL, found)
        raise RunbookError("namespace %s exists and is not owned by %s (it has %s); it was left untouched"
                           % (name, owner, who))


def _present(client: K8sClient, opts: NamespaceOptions, check_mode: bool) -> t.Tuple[t.List[str], t.List[str]]:
    existing = {name: client.get("v1", "namespaces", name, missing_ok=True) for name in opts.names}
    for name, namespace in existing.items():
        if namespace is not None:
            _refuse_foreign(name, namespace, opts.owner)
    created = [name for name, namespace in existing.items() if namespace is None]
    for name in created:
        body = {"metadata": {"name": name, "labels": dict(opts.labels, **{OWNER_LABEL: opts.owner})}}
        client.create("v1", "namespaces", body, dry_run=check_mode)
    return created, [name for name in opts.names if name not in created]


def _absent(client: K8sClient, opts: NamespaceOptions, check_mode: bool) -> t.Tuple[t.List[str], t.List[str]]:
    deleted, gone = [], []
    for name in opts.names:
        namespace = client.get("v1", "namespaces", name, missing_ok=True)
        if namespace is None:
            gone.append(name)
            continue
        _refuse_foreign(name, namespace, opts.owner)
        version = (namespace.get("metadata") or {}).get("resourceVersion")
        client.delete("v1", "namespaces", name, missing_ok=True, resource_version=version, dry_run=check_mode)
        deleted.append(name)
    if opts.wait and not check_mode:
        _wait_gone(client, deleted, opts.wait_timeout)
    return deleted, gone


def _wait_gone(client: K8sClient, names: t.List[str], timeout: float) -> None:
    """Until the namespace controller has emptied and removed them (their finalizers)."""
    deadline = time.monotonic() + timeout
    left = list(names)
    while left:
        left = [name for name in left if client.get("v1", "namespaces", name, missing_ok=True) is not None]
        if not left:
            return
        if time.monotonic() > deadline:
            raise RunbookError("namespace(s) %s still terminating after %ds" % (", ".join(left), timeout),
                               changed=True)
        time.sleep(0.5)


@reports_api_requests
def run_namespace(task: Task[NamespaceOptions]) -> Result:
    opts = task.options
    client = task.client(K8sClient.from_params)
    verb = "would " if task.check_mode else ""
    if opts.state == "present":
        created, kept = _present(client, opts, task.check_mode)
        msg = "%screate %s" % (verb, ", ".join(created)) if created else "all %d namespace(s) exist" % len(kept)
        return {"changed": bool(created), "created": created, "deleted": [], "msg": msg,
                "diff": {"before": {"namespaces": kept}, "after": {"namespaces": list(opts.names)}}}
    deleted, gone = _absent(client, opts, task.check_mode)
    msg = "%sdelete %s" % (verb, ", ".join(deleted)) if deleted else "no namespace to delete"
    return {"changed": bool(deleted), "created": [], "deleted": deleted, "msg": msg,
            "diff": {"before": {"namespaces": deleted}, "after": {"namespaces": []}}}
