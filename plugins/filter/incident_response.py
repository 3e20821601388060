# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an incident response of the role ``runbook.ops.incident_response`` acts on, decided once
(documented in ``incident_response_plan.yml`` and ``incident_response_sections.yml``).

The role only sequences modules: which steps a scenario takes, and each module call's arguments
(:func:`incident_response_plan`), and what the registered results say in the report
(:func:`incident_response_sections`) are pure functions of their inputs."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.filter.maintenance_window import _credentials, _signing_keys
from ansible_collections.runbook.ops.plugins.module_utils._repository import encryption_identity_argspec, repository_argspec

Json = t.Dict[str, t.Any]

# What each scenario does after the evidence is captured (NIST SP 800-61: contain, then eradicate).
SCENARIOS: t.Dict[str, t.Dict[str, bool]] = {
    "breach": {"evidence": True, "isolate": True, "credentials": False, "signing_keys": False, "block": False},
    "unauthorized_access": {"evidence": True, "isolate": True, "credentials": True, "signing_keys": False, "block": False},
    "jwt_compromise": {"evidence": True, "isolate": False, "credentials": False, "signing_keys": True, "block": False},
    "credential_compromise": {"evidence": True, "isolate": False, "credentials": True, "signing_keys": False, "block": False},
    "brute_force": {"evidence": True, "isolate": False, "credentials": False, "signing_keys": False, "block": True},
    "release": {"evidence": False, "isolate": False, "credentials": False, "signing_keys": False, "block": False},
}
# Result fields a report section may read; everything else (module arguments, connection settings) is dropped.
SECTION_FIELDS = ("changed", "failed", "skipped", "skip_reason", "msg", "findings", "_ansible_item_label")


def _evidence_storage(platform: t.Mapping[str, t.Any]) -> Json:
    """The platform's repository options that k8s_evidence takes (not the backup-only ones)."""
    known = set(repository_argspec()) | set(encryption_identity_argspec()) | {"encryption_recipients"}
    return {k: v for k, v in (platform.get("repository") or {}).items() if k in known}


def _consumers(platform: t.Mapping[str, t.Any], namespace: str) -> t.List[Json]:
    """The workloads that verify tokens: every workload of the key's namespace that is not a data store."""
    return [{"kind": w["kind"], "name": w["name"], "namespace": w["namespace"] or platform["namespaces"][0]}
            for w in platform["workloads"]
            if not w.get("data_store") and (w["namespace"] or platform["namespaces"][0]) == namespace]


def _steps(platform: t.Mapping[str, t.Any], scenario: str, incident_id: str, options: t.Mapping[str, t.Any]) -> Json:
    namespaces = list(options.get("namespaces") or platform["namespaces"])
    kube = dict(platform["kubernetes"])
    collector = {k: str(v) for k, v in (options.get("collector") or {}).items() if v not in (None, "")}
    selector = dict(options.get("pod_selector") or {})
    evidence = dict(_evidence_storage(platform), **(options.get("evidence_options") or {}))
    plan: Json = {
        "evidence": [{"object": "Namespace/%s" % ns, "namespace": ns,
                      "args": dict(kube, **dict(evidence, namespace=ns, incident_id=incident_id, state="captured",
                                                pod_selector=selector or None, collector=collector or None))}
                     for ns in namespaces],
        "isolate": [{"object": "Namespace/%s" % ns, "namespace": ns,
                     "args": dict(kube, **dict(options.get("isolate_options") or {}, namespace=ns, incident_id=incident_id,
                                               pod_selector=selector or None, evidence={"capture": False}))}
                    for ns in namespaces],
        "release": [{"object": "Namespace/%s" % ns, "namespace": ns,
                     "args": dict(kube, namespace=ns, incident_id=incident_id, state="released")} for ns in namespaces],
    }
    credentials = _credentials(platform)
    for item in credentials:
        item["args"].pop("rotate_after", None)
        item["args"]["force"] = True  # rotate now, whatever the policy's age
    signing_keys = _signing_keys(platform)
    for item in signing_keys:
        args = item["args"]
        args.pop("rotate_after", None)
        # The compromise runbook: every key revoked at once, a single new one published, consumers restarted.
        args.update(force=True, revoke=["all"], namespace=args["namespace"] or platform["namespaces"][0])
        if not args.get("restart"):
            args["restart"] = list(options.get("jwt_consumers") or _consumers(platform, args["namespace"]))
    plan["credentials"], plan["signing_keys"] = credentials, signing_keys
    brute = dict(options.get("brute_force") or {})
    block_ns = brute.pop("namespace", None) or platform["namespaces"][0]
    block = dict(kube, **dict(brute.pop("options", None) or {}, namespace=block_ns, incident_id=incident_id))
    block.update({k: v for k, v in brute.items() if v not in (None, "", [])})
    plan["block"] = [{"object": "Namespace/%s" % block_ns, "namespace": block_ns, "args": dict(block, state="blocked")}]
    plan["unblock"] = [{"object": "Namespace/%s" % block_ns, "namespace": block_ns,
                        "args": dict(kube, namespace=block_ns, incident_id=incident_id, state="released")}]
    plan["namespaces"] = namespaces
    return plan


def incident_response_plan(platform: t.Any, scenario: t.Any, incident_id: t.Any,
                           options: t.Optional[t.Mapping[str, t.Any]] = None) -> Json:
    """The steps of ``scenario`` and the arguments of each module call, by key under ``args`` (the
    items themselves hold no connection setting, so a loop over them shows no secret)."""
    if not isinstance(platform, t.Mapping) or "namespaces" not in platform or "workloads" not in platform:
        raise AnsibleFilterError("incident_response_plan expects runbook_platform as the platform role sets it")
    if scenario not in SCENARIOS:
        raise AnsibleFilterError("incident_response_plan: scenario %r is not one of %s" % (scenario, ", ".join(SCENARIOS)))
    try:
        plan = _steps(platform, str(scenario), str(incident_id), options or {})
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError("incident_response_plan: the platform description lacks %s; "
                                 "let runbook.ops.platform fill in its defaults first" % exc)
    args: Json = {}
    for step in ("evidence", "isolate", "release", "credentials", "signing_keys", "block", "unblock"):
        for item in plan[step]:
            item["key"] = "%s %s" % (step, item["object"])
            args[item["key"]] = item.pop("args")
    plan.update(args=args, scenario=scenario, incident_id=incident_id, steps=dict(SCENARIOS[str(scenario)]))
    return plan


def _section(result: t.Any) -> Json:
    if not isinstance(result, t.Mapping):
        return {"skipped": True, "skip_reason": "not run"}
    kept = {k: result[k] for k in SECTION_FIELDS if k in result}
    if isinstance(result.get("results"), list):
        kept["results"] = [_section(item) for item in result["results"]]
    return kept


def incident_response_sections(steps: t.Any) -> t.List[Json]:
    """Report sections (``findings_report``) from ``[{name, source, result}]``: each result keeps only
    what a report reads (never module arguments); a step that did not run reads as skipped."""
    if not isinstance(steps, list):
        raise AnsibleFilterError("incident_response_sections expects a list of {name, source, result}")
    return [{"name": step["name"], "source": step["source"], "result": _section(step.get("result"))} for step in steps]


class FilterModule:
    """runbook.ops incident response filters."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"incident_response_plan": incident_response_plan, "incident_response_sections": incident_response_sections}
