"""The restore plan of the role runbook.ops.dr_restore: a drill names only scratch targets, a restore
the platform's own, and the data times come from the restored data (pure logic, no services)."""

from __future__ import annotations

import copy
import typing as t
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.filter.dr_restore import (
    dr_restore_consumers, dr_restore_data_times, dr_restore_health, dr_restore_plan)
from ansible_collections.runbook.ops.plugins.filter.platform_description import platform_description

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/platform/meta/argument_specs.yml").read_text())
PROD_REDIS = {"login_host": "10.0.0.5", "login_port": 6379, "login_password": "secret-redis"}

PLATFORM = platform_description({
    "name": "shop",
    "namespaces": ["shop", "shop-edge"],
    "workloads": [{"kind": "StatefulSet", "name": "db", "data_store": True},
                  {"name": "api"}, {"name": "web", "namespace": "shop-edge"}],
    "databases": [{"name": "orders", "connection": {"login_password": "secret-pg"},
                   "newest_data": {"table": "orders", "column": "created_at"}},
                  {"name": "archive", "backup": False}],
    "redis": [{"name": "cache", "connection": PROD_REDIS,
               "drill_connection": {"login_host": "10.0.0.9", "login_port": 6379}}],
    "repository": {"repository": "s3://b/p"},
}, SPEC)


def plan(**kwargs: t.Any) -> t.Dict[str, t.Any]:
    return dr_restore_plan(copy.deepcopy(PLATFORM), run_id="drill-1", **kwargs)


def test_a_drill_names_only_scratch_targets() -> None:
    drill = plan()
    assert drill["namespace_mapping"] == {"shop": "shop-drill", "shop-edge": "shop-edge-drill"}
    assert drill["scratch_namespaces"] == ["shop-drill", "shop-edge-drill"]
    assert [(d["name"], d["target"]) for d in drill["databases"]] == [("orders", "orders_drill")]
    assert drill["redis"][0]["target"]["login_host"] == "10.0.0.9"
    assert drill["kubernetes"]["existing"] == "skip"
    assert drill["stop_consumers"] is False
    assert [s["namespace"] for s in drill["start_order"]] == ["shop-drill", "shop-drill", "shop-edge-drill"]


def test_a_restore_names_the_platform_and_stops_only_consumers() -> None:
    restore = plan(mode="restore")
    assert restore["namespace_mapping"] == {} and restore["scratch_namespaces"] == []
    assert restore["databases"][0]["target"] == "orders"
    assert restore["redis"][0]["target"] == PROD_REDIS
    assert restore["kubernetes"]["existing"] == "update"
    assert restore["stop_consumers"] is True
    assert [c["ref"] for c in restore["consumers"]] == ["Deployment/api", "Deployment/web"]


@pytest.mark.parametrize("scope, parts", [("full", ["kubernetes", "postgresql", "redis"]),
                                          ("partial", ["postgresql", "redis"]), ("config_only", ["kubernetes"]),
                                          (["redis", "kubernetes"], ["kubernetes", "redis"])])
def test_scopes(scope: t.Any, parts: t.List[str]) -> None:
    chosen = plan(mode="restore", scope=scope)
    assert chosen["parts"] == parts
    assert chosen["stop_consumers"] is (parts != ["kubernetes"])
    assert bool(chosen["databases"]) is ("postgresql" in parts)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "dril"}, "mode"), ({"scope": "most"}, "scope"), ({"scope": ["pg"]}, "unknown part"),
    ({"scope": []}, "non-empty"), ({"suffix": "Drill!"}, "suffix")])
def test_mistakes_are_refused_by_name(kwargs: t.Dict[str, t.Any], message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        plan(**kwargs)


def test_a_drill_into_the_production_redis_is_refused() -> None:
    platform = copy.deepcopy(PLATFORM)
    platform["redis"][0]["drill_connection"] = dict(PROD_REDIS, login_password="other")
    with pytest.raises(AnsibleFilterError, match="production instance"):
        dr_restore_plan(platform, run_id="x")


def test_a_redis_without_scratch_is_left_out_and_said() -> None:
    platform = copy.deepcopy(PLATFORM)
    platform["redis"][0]["drill_connection"] = {}
    entry = dr_restore_plan(platform, run_id="x")["redis"][0]
    assert "drill_connection" in entry["left_out"]


def test_long_names_stay_within_limits() -> None:
    platform = copy.deepcopy(PLATFORM)
    platform["namespaces"] = ["n" * 63]
    platform["databases"][0]["name"] = "é" * 31  # 62 bytes
    drill = dr_restore_plan(platform, run_id="x")
    assert all(len(ns) <= 63 for ns in drill["scratch_namespaces"])
    assert len(drill["databases"][0]["target"].encode()) <= 63
    assert drill["databases"][0]["target"].endswith("_drill")


def test_consumers_that_exist_in_start_order() -> None:
    restore = plan(mode="restore")
    statuses = [{"targets": [{"object": "Deployment/shop/api"}, {"object": "StatefulSet/shop/db"}]}]
    assert dr_restore_consumers(restore, statuses) == [{"namespace": "shop", "steps": [{"targets": ["Deployment/api"]}]}]


def test_data_times_come_from_the_restored_data() -> None:
    drill = plan()
    times = dr_restore_data_times(drill, [{"newest_at": "2026-12-06T01:00:00Z", "written_at": "2026-12-06T02:00:00Z"}],
                                  [{"written_at": None}])
    assert times == [{"source": "postgresql/orders", "newest_at": "2026-12-06T01:00:00Z", "method": "column"},
                     {"source": "redis/cache", "newest_at": None, "method": "canary"}]


def test_health_of_a_copy_is_judged_against_its_source() -> None:
    drill = plan()
    broken = {"severity": "critical", "check": "workload_unavailable", "object": "Deployment/shop/api"}
    copy_broken = dict(broken, object="Deployment/shop-drill/api")
    new = {"severity": "critical", "check": "pods", "object": "Pod/shop-edge-drill/web-5d8-x2"}
    judged = dr_restore_health(drill, {"findings": [copy_broken, new]}, {"findings": [broken]})
    assert judged["ok"] is False and judged["new"] == [new] and judged["as_in_source"] == [copy_broken]
    assert dr_restore_health(drill, {"findings": [copy_broken]}, {"findings": [broken]})["ok"] is True


def test_a_drill_does_not_judge_its_copies_of_the_data_stores() -> None:
    drill = plan()
    ignored = [{"severity": "critical", "check": "workloads", "object": "StatefulSet/shop-drill/db"},
               {"severity": "critical", "check": "pods", "object": "Pod/shop-drill/db-0"},
               {"severity": "critical", "check": "pvcs", "object": "PersistentVolumeClaim/shop-drill/data-db-0"}]
    judged = {"severity": "critical", "check": "pods", "object": "Pod/shop-drill/api-0"}
    assert dr_restore_health(drill, {"findings": ignored})["ok"] is True
    assert dr_restore_health(drill, {"findings": ignored + [judged]})["new"] == [judged]
    # A restore judges everything: the data stores are the platform's own.
    restore = plan(mode="restore")
    own = [dict(f, object=f["object"].replace("shop-drill", "shop")) for f in ignored]
    assert dr_restore_health(restore, {"findings": own})["new"] == own


def test_only_the_described_workloads_decide() -> None:
    restore = plan(mode="restore")
    side_job = [{"severity": "critical", "check": "workloads", "object": "Deployment/shop/audit-shipper"},
                {"severity": "critical", "check": "pods", "object": "Pod/shop/audit-shipper-5d8-x2"}]
    described = [{"severity": "critical", "check": "pods", "object": "Pod/shop/api-7f9-abc"},
                 {"severity": "critical", "check": "services", "object": "Service/shop/api"}]
    assert dr_restore_health(restore, {"findings": side_job})["ok"] is True
    assert dr_restore_health(restore, {"findings": side_job + described})["new"] == described
    # Nothing described: everything decides.
    bare = dr_restore_plan(dict(copy.deepcopy(PLATFORM), workloads=[]), mode="restore", run_id="x")
    assert dr_restore_health(bare, {"findings": side_job})["new"] == side_job
