# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The platform description with its defaults filled in (documented in ``platform_description.yml``).

The role ``runbook.ops.platform`` validates ``runbook_platform`` against its ``meta/argument_specs.yml``;
Ansible does not hand the validated values back, so this filter validates again with the same
specification and returns them, then fills in what depends on other fields (namespaces, set names).
One specification is the only place a default lives."""

from __future__ import annotations

import typing as t
from pathlib import Path

import yaml

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._names import duration, k8s_namespace, path_segment

# Keys of the role specification that are documentation, not validation.
_DOC_KEYS = ("description", "short_description", "version_added")


def _validation_spec(options: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    spec: t.Dict[str, t.Any] = {}
    for name, option in options.items():
        entry = {key: value for key, value in option.items() if key not in _DOC_KEYS}
        if "options" in entry:
            entry["options"] = _validation_spec(entry["options"])
        spec[name] = entry
    return spec


def _platform_spec(role_spec: t.Any) -> t.Dict[str, t.Any]:
    try:
        options = role_spec["argument_specs"]["main"]["options"]
    except (KeyError, TypeError):
        raise AnsibleFilterError("platform_description: the specification has no argument_specs.main.options")
    return _validation_spec(options)


def _with_namespace(entries: t.List[t.Dict[str, t.Any]], namespace: str) -> None:
    for entry in entries:
        entry["namespace"] = entry.get("namespace") or namespace


def _with_set(entries: t.List[t.Dict[str, t.Any]], platform: str) -> None:
    for entry in entries:
        entry["set"] = entry.get("set") or "%s-%s" % (platform, entry["name"])
        path_segment("set of %s" % entry["name"], entry["set"])


def _check(platform: t.Dict[str, t.Any]) -> None:
    """What the argument specification cannot say: names that must be unique, durations that must parse."""
    if not platform["namespaces"]:
        raise RunbookError("runbook_platform.namespaces: at least one namespace is needed")
    for namespace in platform["namespaces"]:
        k8s_namespace("runbook_platform.namespaces", namespace)
    for group in ("databases", "redis"):
        names = [entry["name"] for entry in platform[group]]
        if len(set(names)) != len(names):
            raise RunbookError("runbook_platform.%s: names must be unique, got %s" % (group, names))
    targets = {"postgresql": {d["name"] for d in platform["databases"]}, "redis": {r["name"] for r in platform["redis"]}}
    for credential in platform["credentials"]:
        if credential["target"] not in targets[credential["service"]]:
            known = ", ".join(sorted(targets[credential["service"]])) or "none"
            raise RunbookError("runbook_platform.credentials: target %r is not a %s entry of this platform (%s)"
                               % (credential["target"], credential["service"], known))
    for field in ("backup_interval",):
        duration("runbook_platform.%s" % field, platform[field])
    for field in ("rto", "rpo"):
        duration("runbook_platform.objectives.%s" % field, platform["objectives"][field])
    for window in platform["maintenance_windows"]:
        duration("runbook_platform.maintenance_windows duration", window["duration"])
        hours, minutes = (str(window["start"]).split(":", 1) + [""])[:2]
        if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60 and len(minutes) == 2):
            raise RunbookError("runbook_platform.maintenance_windows: start %r is not HH:MM" % window["start"])


def _plain(value: t.Any) -> t.Any:
    """Plain lists and dicts: reading every item templates it here, where the inventory's filters resolve (a deep
    copy made inside the validator would template lazily-templated values without them)."""
    if isinstance(value, t.Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _installed_spec() -> t.Any:
    """The argument specification of the role ``runbook.ops.platform`` in this installed collection."""
    path = Path(__file__).resolve().parents[2] / "roles" / "platform" / "meta" / "argument_specs.yml"
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise AnsibleFilterError("platform_description: cannot read %s: %s" % (path, exc))


def platform_description(platform: t.Any, role_spec: t.Any = None) -> t.Dict[str, t.Any]:
    """``platform`` validated against ``role_spec`` (the platform role's argument specification, by default the one
    installed beside this filter), defaults filled."""
    if role_spec is None:
        role_spec = _installed_spec()
    result = ArgumentSpecValidator(_platform_spec(role_spec)).validate({"runbook_platform": _plain(platform)})
    if result.error_messages:
        raise AnsibleFilterError("runbook_platform is not valid: %s" % "; ".join(result.error_messages))
    described: t.Dict[str, t.Any] = result.validated_parameters["runbook_platform"]
    try:
        _check(described)
        _derive(described)
    except RunbookError as exc:
        raise AnsibleFilterError("runbook_platform is not valid: %s" % exc)
    return described


def _derive(described: t.Dict[str, t.Any]) -> None:
    """Fill in what depends on other fields: namespaces of entries, backup set names, retention per kind."""
    first = described["namespaces"][0]
    for group in ("workloads", "expected_objects", "signing_keys"):
        _with_namespace(described[group], first)
    for group in ("databases", "redis"):
        _with_set(described[group], described["name"])
    k8s = described["kubernetes_backup"]
    k8s["set"] = k8s["set"] or "%s-kubernetes" % described["name"]
    retention = described["retention"]
    for kind in ("postgresql", "redis", "kubernetes"):
        retention[kind] = retention.get(kind) or retention["default"]


class FilterModule:
    """runbook.ops platform description filter."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"platform_description": platform_description}
