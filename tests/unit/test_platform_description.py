"""The platform description filter: the role's own specification fills defaults and refuses mistakes."""

from __future__ import annotations

import copy
import typing as t
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.filter.platform_description import platform_description

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/platform/meta/argument_specs.yml").read_text())

MINIMAL: t.Dict[str, t.Any] = {
    "name": "rust-security",
    "namespaces": ["rust-security", "rust-security-jobs"],
    "workloads": [{"name": "auth-service"}, {"kind": "StatefulSet", "name": "postgres", "namespace": "data"}],
    "databases": [{"name": "auth_service", "connection": {"login_host": "db", "login_password": "x"},
                   "purge": [{"table": "audit_events", "older_than": "90d"}]}],
    "redis": [{"name": "cache", "set": "own-set"}],
    "credentials": [{"service": "postgresql", "target": "auth_service", "options": {"role": "app"}}],
    "retention": {"redis": {"keep_last": 3}},
}


def described(**changes: t.Any) -> t.Dict[str, t.Any]:
    platform = copy.deepcopy(MINIMAL)
    platform.update(changes)
    return platform_description(platform, SPEC)


def test_defaults_come_from_the_specification() -> None:
    platform = described()
    assert platform["workloads"][0] == {"kind": "Deployment", "name": "auth-service", "namespace": "rust-security",
                                        "wait_timeout": 300, "restart_in_window": False, "data_store": False}
    assert platform["workloads"][1]["namespace"] == "data"
    database = platform["databases"][0]
    assert database["set"] == "rust-security-auth_service"
    assert database["maintenance"]["vacuum_full_days"] == [1, 2, 3, 4, 5, 6, 7]
    assert database["purge"][0]["column"] == "created_at"
    assert platform["redis"][0]["set"] == "own-set"
    assert platform["kubernetes_backup"] == {"enabled": True, "set": "rust-security-kubernetes", "options": {},
                                             "restore_existing": "update"}
    assert platform["retention"]["redis"] == {"keep_last": 3}
    assert platform["retention"]["postgresql"] == platform["retention"]["default"] == {"keep_last": 7, "keep_daily": 14}
    assert platform["objectives"] == {"rto": "4h", "rpo": "24h"}
    assert platform["backup_interval"] == "23h"


@pytest.mark.parametrize("changes, message", [
    ({"namespaces": []}, "at least one namespace"),
    ({"namespaces": ["Bad_NS"]}, "runbook_platform.namespaces"),
    ({"workloads": [{"name": "x", "kind": "Job"}]}, "kind"),
    ({"databases": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
    ({"credentials": [{"service": "redis", "target": "auth_service", "options": {}}]}, "is not a redis entry"),
    ({"objectives": {"rpo": "soon"}}, "objectives.rpo"),
    ({"maintenance_windows": [{"weekdays": ["sunday"], "start": "2am", "duration": "4h"}]}, "is not HH:MM"),
    ({"maintenance_windows": [{"weekdays": ["sun"], "start": "02:00", "duration": "4h"}]}, "weekdays"),
    ({"redis": [{"name": "cache", "set": "../escape"}]}, "set of cache"),
    ({"surprise": 1}, "surprise"),
])
def test_mistakes_fail_naming_the_field(changes: t.Dict[str, t.Any], message: str) -> None:
    with pytest.raises(AnsibleFilterError, match="runbook_platform is not valid") as failure:
        described(**changes)
    assert message in str(failure.value)


def test_a_description_without_a_name_is_refused() -> None:
    platform = copy.deepcopy(MINIMAL)
    del platform["name"]
    with pytest.raises(AnsibleFilterError, match="name"):
        platform_description(platform, SPEC)


def test_the_installed_specification_is_the_default() -> None:
    assert platform_description(copy.deepcopy(MINIMAL)) == described()
