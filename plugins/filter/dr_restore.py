# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a restore or a restore drill of the role ``runbook.ops.dr_restore`` acts on, decided once
(documented in ``dr_restore_plan.yml``, ``dr_restore_consumers.yml`` and ``dr_restore_data_times.yml``).

A drill never names a production target: its namespaces, databases and Redis are scratch copies
(``<namespace>-<suffix>``, ``<database>_<suffix>``, the Redis instance's ``drill_connection``), and a
plan whose scratch Redis is the production one is refused here, before anything runs."""

from __future__ import annotations

import re
import typing as t

from ansible.errors import AnsibleFilterError

Json = t.Dict[str, t.Any]

PARTS = ("kubernetes", "postgresql", "redis")
SCOPES = {"full": PARTS, "partial": ("postgresql", "redis"), "config_only": ("kubernetes",)}
MODES = ("drill", "restore")
# Restored after the data, in start order; everything else of the backup is configuration and comes first.
WORKLOAD_KINDS = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"]
_SUFFIX = re.compile(r"^[a-z0-9]([a-z0-9]{0,14})$")
NAMESPACE_MAX = 63
DATABASE_MAX_BYTES = 63


def _parts(scope: t.Any) -> t.List[str]:
    if isinstance(scope, str):
        if scope not in SCOPES:
            raise AnsibleFilterError("scope %r is not one of %s or a list of parts (%s)"
                                     % (scope, ", ".join(SCOPES), ", ".join(PARTS)))
        return list(SCOPES[scope])
    if not isinstance(scope, (list, tuple)) or not scope:
        raise AnsibleFilterError("scope must be full, partial, config_only or a non-empty list of parts")
    unknown = [part for part in scope if part not in PARTS]
    if unknown:
        raise AnsibleFilterError("scope names unknown part(s) %s; parts are %s" % (unknown, ", ".join(PARTS)))
    return [part for part in PARTS if part in scope]


def _scratch_namespace(name: str, suffix: str) -> str:
    head = name[:NAMESPACE_MAX - len(suffix) - 1].rstrip("-")
    return "%s-%s" % (head, suffix)


def _scratch_database(name: str, suffix: str) -> str:
    room = DATABASE_MAX_BYTES - len(suffix) - 1
    head = name.encode("utf-8")[:room].decode("utf-8", "ignore")
    return "%s_%s" % (head, suffix)


def _same_server(left: t.Mapping[str, t.Any], right: t.Mapping[str, t.Any]) -> bool:
    def where(conn: t.Mapping[str, t.Any]) -> t.Tuple[str, int]:
        host = str(conn.get("login_host") or conn.get("host") or "localhost")
        if host in ("127.0.0.1", "::1", "localhost"):
            host = "localhost"
        return host, int(conn.get("login_port") or conn.get("port") or 6379)
    return where(left) == where(right)


def _redis_entries(platform: Json, drill: bool) -> t.List[Json]:
    entries = []
    for item in platform.get("redis") or []:
        if not item.get("backup", True):
            continue
        target = (item.get("drill_connection") or {}) if drill else item["connection"]
        entry = {"name": item["name"], "set": item["set"], "source": item["connection"], "target": target,
                 "left_out": ""}
        if drill and not target:
            entry["left_out"] = "no drill_connection (a scratch Redis) is described for %s" % item["name"]
        elif drill and _same_server(item["connection"], target):
            raise AnsibleFilterError("redis %s: drill_connection points at the production instance; a drill "
                                     "must restore into a scratch Redis" % item["name"])
        entries.append(entry)
    return entries


def _database_entries(platform: Json, drill: bool, suffix: str) -> t.List[Json]:
    entries = []
    for item in platform.get("databases") or []:
        if not item.get("backup", True):
            continue
        target = _scratch_database(item["name"], suffix) if drill else item["name"]
        entries.append({"name": item["name"], "set": item["set"], "target": target, "connection": item["connection"],
                        "newest_data": item.get("newest_data")})
    return entries


def dr_restore_plan(platform: Json, mode: str = "drill", scope: t.Any = "full", run_id: str = "",
                    suffix: str = "drill") -> Json:
    """Targets and order of one run: see ``dr_restore_plan.yml``."""
    if mode not in MODES:
        raise AnsibleFilterError("mode %r is not one of %s" % (mode, ", ".join(MODES)))
    if not isinstance(suffix, str) or not _SUFFIX.match(suffix):
        raise AnsibleFilterError("suffix %r must be 1 to 15 lowercase letters or digits" % (suffix,))
    drill = mode == "drill"
    parts = _parts(scope)
    namespaces = list(platform["namespaces"])
    mapping = {ns: (_scratch_namespace(ns, suffix) if drill else ns) for ns in namespaces}
    k8s = platform.get("kubernetes_backup") or {}
    if not k8s.get("enabled", True) and "kubernetes" in parts:
        parts.remove("kubernetes")
    plan: Json = {
        "run_id": run_id, "mode": mode, "drill": drill, "parts": parts,
        "namespace_mapping": {ns: target for ns, target in mapping.items() if ns != target},
        "namespaces": [mapping[ns] for ns in namespaces],
        "scratch_namespaces": [mapping[ns] for ns in namespaces] if drill and "kubernetes" in parts else [],
        "kubernetes": {"set": k8s.get("set") or "%s-kubernetes" % platform["name"],
                       "existing": "skip" if drill else k8s.get("restore_existing", "update"),
                       "workload_kinds": list(WORKLOAD_KINDS)},
        "databases": _database_entries(platform, drill, suffix) if "postgresql" in parts else [],
        "redis": _redis_entries(platform, drill) if "redis" in parts else [],
    }
    data_parts = [part for part in ("postgresql", "redis") if part in parts]
    # A drill's copies have no consumers to stop; a restore stops every workload that is not a data store.
    plan["stop_consumers"] = bool(data_parts) and not drill
    plan["consumers"] = [{"namespace": w["namespace"], "ref": "%s/%s" % (w["kind"], w["name"])}
                         for w in platform.get("workloads") or [] if not w.get("data_store")]
    # A drill restores the data into scratch databases and Redis, not into copies of the data-store
    # workloads: those copies (and their volumes, which need the cluster's provisioner) are not judged.
    plan["unjudged"] = [{"namespace": mapping.get(w["namespace"], w["namespace"]), "kind": w["kind"], "name": w["name"]}
                        for w in platform.get("workloads") or [] if w.get("data_store")] if drill else []
    plan["start_order"] = [{"namespace": mapping.get(w["namespace"], w["namespace"]),
                            "ref": "%s/%s" % (w["kind"], w["name"]), "wait_timeout": w.get("wait_timeout", 300)}
                           for w in platform.get("workloads") or []]
    return plan


def dr_restore_consumers(plan: Json, statuses: t.Sequence[Json]) -> t.List[Json]:
    """Per namespace, the consumers that exist now (a deleted namespace has none to stop), as
    ``k8s_rollout`` steps in start order (``stop`` runs them in reverse)."""
    existing = set()
    for status in statuses:
        for target in status.get("targets") or []:
            existing.add(str(target.get("object", "")))
    grouped: t.Dict[str, t.List[Json]] = {}
    for consumer in plan.get("consumers") or []:
        kind, name = consumer["ref"].split("/", 1)
        if "%s/%s/%s" % (kind, consumer["namespace"], name) in existing:
            grouped.setdefault(consumer["namespace"], []).append({"targets": [consumer["ref"]]})
    return [{"namespace": ns, "steps": steps} for ns, steps in grouped.items()]


def dr_restore_data_times(plan: Json, databases: t.Sequence[Json], redis: t.Sequence[Json]) -> t.List[Json]:
    """``dr_journal``'s ``data_times``: per restored store, the newest data time read back from the
    restored copy (a declared column, else the canary); null when nothing could be read."""
    times = []
    for entry, result in zip(plan.get("databases") or [], databases):
        column = bool(entry.get("newest_data"))
        newest = (result or {}).get("newest_at") if column else (result or {}).get("written_at")
        times.append({"source": "postgresql/%s" % entry["name"], "newest_at": newest or None,
                      "method": "column" if column else "canary"})
    for entry, result in zip(plan.get("redis") or [], redis):
        if entry.get("left_out"):
            continue
        times.append({"source": "redis/%s" % entry["name"], "newest_at": (result or {}).get("written_at") or None,
                      "method": "canary"})
    return times


def _unmapped(obj: str, reverse: t.Mapping[str, str]) -> str:
    """``Kind/namespace/name`` of a scratch copy as the source object it copies."""
    parts = obj.split("/")
    if len(parts) >= 3 and parts[1] in reverse:
        parts[1] = reverse[parts[1]]
    return "/".join(parts)


def _unjudged(plan: Json, obj: str) -> bool:
    """A drill's copy of a data-store workload, one of its Pods (``<name>-...``) or any volume claim."""
    parts = obj.split("/")
    if not plan.get("drill") or len(parts) < 3:
        return False
    kind, namespace, name = parts[0], parts[1], "/".join(parts[2:])
    if kind == "PersistentVolumeClaim":
        return True
    for store in plan.get("unjudged") or []:
        if store["namespace"] != namespace:
            continue
        if (kind == store["kind"] and name == store["name"]) or (kind == "Pod" and name.startswith(store["name"] + "-")):
            return True
    return False


def _judged(plan: Json, obj: str) -> bool:
    """Findings on the platform's described workloads (and their Pods) count; so does anything else
    that is not a workload. A workload the description does not list (a one-off, a known broken
    side job) does not decide whether the platform recovered; with no workloads described, all count."""
    if _unjudged(plan, obj):
        return False
    described = plan.get("start_order") or []
    parts = obj.split("/")
    if not described or len(parts) < 3:
        return True
    kind, namespace, name = parts[0], parts[1], "/".join(parts[2:])
    mine = [entry["ref"].split("/", 1) for entry in described if entry["namespace"] == namespace]
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        return [kind, name] in mine
    if kind == "Pod":
        return any(name.startswith(workload + "-") for _kind, workload in mine)
    return True


def dr_restore_health(plan: Json, target: Json, baseline: t.Optional[Json] = None) -> Json:
    """Whether the restored namespaces are healthy: no critical finding on what the platform describes,
    except, in a drill, one the source has too (a drill proves the restore, it cannot heal what
    production already lacks)."""
    reverse = {scratch: source for source, scratch in (plan.get("namespace_mapping") or {}).items()}
    known = {(f.get("check"), f.get("object")) for f in (baseline or {}).get("findings") or []
             if f.get("severity") == "critical"}
    critical = [f for f in target.get("findings") or [] if f.get("severity") in ("critical", "unknown")
                and _judged(plan, str(f.get("object")))]
    new = [f for f in critical if (f.get("check"), _unmapped(str(f.get("object")), reverse)) not in known]
    return {"ok": not new, "new": new, "as_in_source": [f for f in critical if f not in new]}


class FilterModule:
    """runbook.ops restore plan filters."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"dr_restore_plan": dr_restore_plan, "dr_restore_consumers": dr_restore_consumers,
                "dr_restore_data_times": dr_restore_data_times, "dr_restore_health": dr_restore_health}
