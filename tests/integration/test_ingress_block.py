"""ingress_block against a real kube-apiserver; the auth service's log is a file KWOK serves through
the API server's pods/log endpoint, exactly as ``kubectl logs`` reads it."""

from __future__ import annotations

import datetime
import ipaddress
import json
import typing as t
from pathlib import Path

import pytest

from tests.harness import kwok
from tests.harness.collection import run_module
from tests.harness.hostile import assert_clean_failure
from tests.harness.k8s import wait_for, without_server_fields
from tests.harness.process import free_port
from tests.harness.tasks import make_task

from ansible_collections.runbook.ops.plugins.module_utils._ingress_block import (
    DENYLIST, LIMIT_CONNECTIONS, LIMIT_RPS, BlockOptions, apply_block, change_ingress, record_key)
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sError, resource_path

ING = ("networking.k8s.io/v1", "ingresses")
# address -> failed logins in the last hour (the seeded log)
FAILURES = {"203.0.113.7": 30, "2001:db8::66": 20, "::ffff:198.51.100.4": 15, "192.0.2.200": 12,
            "10.1.2.3": 40, "127.0.0.1": 50, "198.51.100.77": 5}
EXPECTED_RANKING = [{"address": "203.0.113.7", "failures": 30}, {"address": "2001:db8::66", "failures": 20},
                    {"address": "198.51.100.4", "failures": 15}, {"address": "192.0.2.200", "failures": 12}]
WEB_ANNOTATIONS = {"owner": "platform", DENYLIST: "192.0.2.0/24, 198.51.100.0/30"}


def auth_line(address: str, ok: bool = False) -> str:
    return json.dumps({"level": "warn", "msg": "login_ok" if ok else "authentication_failed", "user": "admin",
                       "client_ip": address, "ts": "2026-12-06T18:00:00Z"})


def seeded_lines() -> t.List[str]:
    lines = []
    for address, count in FAILURES.items():
        lines += [auth_line(address)] * count
    lines += [auth_line("203.0.113.99", ok=True)] * 60  # successes never count
    lines += ["authentication_failed for a request without an address"] * 3
    return lines


def write_log(path: Path, old: t.Sequence[str], recent: t.Sequence[str]) -> None:
    """``old`` lines three hours ago (outside since=1h), then ``recent`` lines in the last minutes."""
    now = datetime.datetime.now(datetime.timezone.utc)
    kwok.write_cri_log(path.with_suffix(".old"), old, start=now - datetime.timedelta(hours=3), step=0.01)
    kwok.write_cri_log(path.with_suffix(".new"), recent, start=now - datetime.timedelta(minutes=5), step=0.01)
    path.write_text(path.with_suffix(".old").read_text() + path.with_suffix(".new").read_text())


def ingress(name: str, ns: str, annotations: t.Optional[dict] = None, cls: str = "nginx") -> dict:
    meta: dict = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"metadata": meta, "spec": {"ingressClassName": cls, "rules": [{"host": "%s.example.test" % name, "http": {
        "paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}}


def ingresses(admin, ns: str) -> t.Dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in admin.list(*ING, namespace=ns)}


def annotations(admin, ns: str, name: str) -> dict:
    return admin.get(*ING, name=name, namespace=ns)["metadata"].get("annotations") or {}


def log_served(admin, ns: str) -> bool:
    try:
        admin.request("GET", resource_path("v1", "pods", ns, "auth-0", "log"), {"container": "auth", "limitBytes": 64},
                      raw=True, retry=False)
    except K8sError:
        return False
    return True


class Site(t.NamedTuple):
    ns: str
    log: Path


@pytest.fixture
def site(kube_cluster, kube_admin, kube_namespace, tmp_path) -> t.Iterator[Site]:
    """Two Ingresses and an auth Pod whose container log is the seeded file."""
    ns = kube_namespace
    log = tmp_path / "auth.log"
    write_log(log, [auth_line("198.51.100.50")] * 40, seeded_lines())
    kwok.container_logs(kube_admin, "ib-%s" % ns, {"auth": log}, namespaces=[ns])
    kube_admin.create("v1", "pods", kwok.pod("auth-0", ns, labels={"app": "auth"}, container="auth"), ns)
    kube_admin.create(*ING, body=ingress("web", ns, WEB_ANNOTATIONS), namespace=ns)
    kube_admin.create(*ING, body=ingress("api", ns), namespace=ns)
    wait_for(lambda: kwok.pod_ready(kube_admin, ns, "auth-0"), what="Pod auth-0 ready")
    wait_for(lambda: log_served(kube_admin, ns), what="KWOK to serve the log of auth-0")
    try:
        yield Site(ns, log)
    finally:
        kube_admin.delete(kwok.API, "clusterlogs", "ib-%s" % ns, missing_ok=True)


def block(cluster, site: Site, check_mode: bool = False, diff: bool = False, **args: t.Any):
    params = dict(cluster.auth(), namespace=site.ns, incident_id="inc-bf-1", top=4, exclude=["10.0.0.0/8"],
                  log_sources=[{"label_selector": "app=auth"}, {"pod": "auth-0", "container": "auth"}])
    params.update(args)
    result = run_module("ingress_block", params, check_mode=check_mode, diff=diff)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# ----------------------------------------------------------------------------------------------


def test_seeded_log_ranks_and_blocks_the_top_addresses_and_release_undoes_exactly(kube_cluster, kube_admin, site):
    ns = site.ns
    before = {name: without_server_fields(obj) for name, obj in ingresses(kube_admin, ns).items()}
    versions = {name: obj["metadata"]["resourceVersion"] for name, obj in ingresses(kube_admin, ns).items()}

    ranked = block(kube_cluster, site, state="ranked")
    assert not ranked.get("failed"), ranked
    assert ranked["changed"] is False and ranked["ranked"] == EXPECTED_RANKING
    # Both sources select the same log: it is read and counted once; the 3-hour-old lines are outside since.
    assert [(e["pod"], e["container"], e["matched"], e["unattributed"]) for e in ranked["logs"]] == [
        ("auth-0", "auth", sum(FAILURES.values()) + 3, 3)]
    assert ranked["status"] == "warning"
    objects = {f["object"]: f for f in ranked["findings"]}
    assert objects["address/10.1.2.3"]["severity"] == "info" and "exclude 10.0.0.0/8" in objects["address/10.1.2.3"]["message"]
    assert "loopback" in objects["address/127.0.0.1"]["message"]
    assert "address/198.51.100.50" not in objects and "address/198.51.100.77" not in objects
    assert ranked["api_requests"] > 0

    checked = block(kube_cluster, site, check_mode=True, diff=True)
    assert not checked.get("failed") and checked["changed"] is True, checked
    assert checked["msg"].startswith("would block 4 address(es) on 2 Ingress(es)")
    assert checked["diff"]["after"]["Ingress/%s/api" % ns][DENYLIST] == (
        "203.0.113.7/32,2001:db8::66/128,198.51.100.4/32,192.0.2.200/32")
    assert {n: o["metadata"]["resourceVersion"] for n, o in ingresses(kube_admin, ns).items()} == versions

    blocked = block(kube_cluster, site, diff=True)
    assert not blocked.get("failed") and blocked["changed"] is True, blocked
    assert blocked["ranked"] == EXPECTED_RANKING
    assert blocked["blocked"] == ["203.0.113.7/32", "2001:db8::66/128", "198.51.100.4/32", "192.0.2.200/32"]
    web = annotations(kube_admin, ns, "web")
    # Existing entries and their text stay first; 192.0.2.200 is inside 192.0.2.0/24 already.
    assert web[DENYLIST] == "192.0.2.0/24, 198.51.100.0/30,203.0.113.7/32,2001:db8::66/128,198.51.100.4/32"
    assert web["owner"] == "platform"
    record = json.loads(web[record_key("inc-bf-1")])
    assert record["denylist"] == {"added": ["203.0.113.7/32", "2001:db8::66/128", "198.51.100.4/32"],
                                  "previous": WEB_ANNOTATIONS[DENYLIST]}
    by_name = {entry["name"]: entry for entry in blocked["ingresses"]}
    assert by_name["web"]["already_denied"] == ["192.0.2.200/32"] and by_name["web"]["record"] is True
    assert annotations(kube_admin, ns, "api")[DENYLIST] == "203.0.113.7/32,2001:db8::66/128,198.51.100.4/32,192.0.2.200/32"
    assert blocked["status"] == "warning"  # the three matching lines without an address
    assert blocked["diff"]["before"]["Ingress/%s/api" % ns] == {}

    again = block(kube_cluster, site)
    assert not again.get("failed") and again["changed"] is False, again
    assert again["msg"].endswith("nothing changed")

    # Someone adds an entry by hand; a new offender appears in the log; the next run adds only it.
    kube_admin.modify(*ING, name="web", namespace=ns, mutate=lambda o: o["metadata"]["annotations"].update(
        {DENYLIST: o["metadata"]["annotations"][DENYLIST] + ",203.0.113.250/32"}) or o)
    write_log(site.log, [], seeded_lines() + [auth_line("203.0.113.51")] * 25)
    wider = block(kube_cluster, site, top=5)
    assert not wider.get("failed") and wider["changed"] is True, wider
    assert wider["ranked"] == EXPECTED_RANKING[:1] + [{"address": "203.0.113.51", "failures": 25}] + EXPECTED_RANKING[1:]
    assert {e["name"]: e["added"] for e in wider["ingresses"]} == {"api": ["203.0.113.51/32"], "web": ["203.0.113.51/32"]}
    web = annotations(kube_admin, ns, "web")
    assert web[DENYLIST].endswith(",203.0.113.250/32,203.0.113.51/32")
    assert json.loads(web[record_key("inc-bf-1")])["denylist"]["added"][-1] == "203.0.113.51/32"

    released = block(kube_cluster, site, state="released", diff=True)
    assert not released.get("failed") and released["changed"] is True, released
    assert {e["name"]: e["removed"] for e in released["ingresses"]} == {
        "api": ["203.0.113.7/32", "2001:db8::66/128", "198.51.100.4/32", "192.0.2.200/32", "203.0.113.51/32"],
        "web": ["203.0.113.7/32", "2001:db8::66/128", "198.51.100.4/32", "203.0.113.51/32"]}
    after = {name: without_server_fields(obj) for name, obj in ingresses(kube_admin, ns).items()}
    assert after["api"] == before["api"]  # exactly as before: no annotation left behind
    # The hand-added entry stays; everything else on the Ingress is as before.
    assert after["web"]["metadata"].pop("annotations") == {
        "owner": "platform", DENYLIST: "192.0.2.0/24,198.51.100.0/30,203.0.113.250/32"}
    before["web"]["metadata"].pop("annotations")
    assert after["web"] == before["web"]

    second = block(kube_cluster, site, state="released")
    assert not second.get("failed") and second["changed"] is False, second
    assert "nothing to release" in second["msg"]


def test_release_without_changes_meanwhile_restores_the_text_exactly(kube_cluster, kube_admin, site):
    ns = site.ns
    before = {name: without_server_fields(obj) for name, obj in ingresses(kube_admin, ns).items()}
    assert not block(kube_cluster, site, ingresses=["web"]).get("failed")
    assert DENYLIST not in annotations(kube_admin, ns, "api")  # only the named Ingress
    checked = block(kube_cluster, site, state="released", check_mode=True)
    assert checked["changed"] is True and record_key("inc-bf-1") in annotations(kube_admin, ns, "web")
    released = block(kube_cluster, site, state="released")
    assert not released.get("failed") and released["changed"], released
    assert {name: without_server_fields(obj) for name, obj in ingresses(kube_admin, ns).items()} == before


def test_rate_limit_round_trip(kube_cluster, kube_admin, site):
    ns = site.ns
    kube_admin.modify(*ING, name="api", namespace=ns, mutate=lambda o: o["metadata"].update(
        annotations={LIMIT_RPS: "100"}) or o)
    before = {name: without_server_fields(obj) for name, obj in ingresses(kube_admin, ns).items()}
    args = dict(method="rate_limit", rate_limit_rps=2, rate_limit_connections=4, log_sources=[])
    limited = block(kube_cluster, site, diff=True, **args)
    assert not limited.get("failed") and limited["changed"] is True, limited
    assert limited["blocked"] == [] and limited["ranked"] == []
    for name in ("web", "api"):
        current = annotations(kube_admin, ns, name)
        assert current[LIMIT_RPS] == "2" and current[LIMIT_CONNECTIONS] == "4"
        assert DENYLIST not in current or current[DENYLIST] == WEB_ANNOTATIONS[DENYLIST]
    record = json.loads(annotations(kube_admin, ns, "api")[record_key("inc-bf-1")])
    assert record["rate_limit"]["previous"] == {LIMIT_RPS: "100", LIMIT_CONNECTIONS: None}
    assert limited["diff"]["before"]["Ingress/%s/api" % ns] == {LIMIT_RPS: "100"}
    assert block(kube_cluster, site, **args)["changed"] is False
    released = block(kube_cluster, site, state="released")
    assert not released.get("failed") and released["changed"] is True, released
    assert {name: without_server_fields(obj) for name, obj in ingresses(kube_admin, ns).items()} == before


def test_nothing_readable_or_a_damaged_record_fails_and_changes_nothing(kube_cluster, kube_admin, site):
    ns = site.ns
    versions = {n: o["metadata"]["resourceVersion"] for n, o in ingresses(kube_admin, ns).items()}
    typo = block(kube_cluster, site, log_sources=[{"label_selector": "app=auht"}])
    msg = assert_clean_failure(typo, mentions=["no log"])
    assert "app=auht" in msg and typo["status"] == "warning" and typo["api_requests"] > 0
    gone = block(kube_cluster, site._replace(ns="no-such-namespace"), state="released")
    assert not gone.get("failed") and gone["changed"] is False and "nothing to release" in gone["msg"], gone
    missing = block(kube_cluster, site, ingresses=["web", "no-such-ingress"])
    assert_clean_failure(missing, mentions=["no-such-ingress", "nothing was changed"])
    assert {n: o["metadata"]["resourceVersion"] for n, o in ingresses(kube_admin, ns).items()} == versions

    kube_admin.modify(*ING, name="api", namespace=ns, mutate=lambda o: o["metadata"].update(
        annotations={record_key("inc-bf-1"): '{"incident_id": "inc-bf-1", "denylist": "0.0.0.0/0"}'}) or o)
    planted = kube_admin.get(*ING, name="api", namespace=ns)["metadata"]["resourceVersion"]
    for state in ("blocked", "released"):
        result = block(kube_cluster, site, state=state, ingresses=["api"])
        assert_clean_failure(result, mentions=["not a readable block record", "Ingress/%s/api" % ns])
    assert kube_admin.get(*ING, name="api", namespace=ns)["metadata"]["resourceVersion"] == planted


def test_unreachable_api_server_is_a_clean_failure(kube_cluster, site):
    port = free_port()
    result = run_module("ingress_block", dict(host="https://127.0.0.1:%d" % port, api_key="token", validate_certs=False,
                                              namespace=site.ns, incident_id="inc-bf-1",
                                              log_sources=[{"label_selector": "app=auth"}]))
    msg = assert_clean_failure(result, mentions=["unreachable"])
    assert "127.0.0.1:%d" % port in msg and isinstance(result["api_requests"], int)


def test_a_change_made_between_read_and_write_is_kept(kube_cluster, kube_admin, site):
    """Someone edits the denylist after the module read the Ingress and before it writes: the write
    fails with 409, the module reads again and merges into the new value; nothing is lost."""
    ns = site.ns
    client = kube_cluster.client()
    params = dict(kube_cluster.auth(), namespace=ns, incident_id="inc-bf-1", method="rate_limit")
    task = make_task("ingress_block", BlockOptions.from_params, params, clients={K8sClient.from_params: client})
    calls = []

    def compute(annotations):
        calls.append(dict(annotations))
        if len(calls) == 2:  # inside modify(): after its read, before its write
            kube_admin.modify(*ING, name="web", namespace=ns, mutate=lambda o: o["metadata"]["annotations"].update(
                {DENYLIST: o["metadata"]["annotations"][DENYLIST] + ",198.51.100.9/32"}) or o)
        return apply_block(annotations, incident_id="inc-bf-1", method="denylist",
                           addresses=[ipaddress.ip_address("203.0.113.7")], limits={}, now="2026-12-06T18:00:00Z",
                           where="Ingress/%s/web" % ns)
    try:
        outcome = change_ingress(task, client, kube_admin.get(*ING, name="web", namespace=ns), compute)
    finally:
        client.close()
    assert len(calls) == 3 and DENYLIST + "" in calls[2] and calls[2][DENYLIST].endswith(",198.51.100.9/32")
    assert outcome.entry["changed"] and outcome.entry["added"] == ["203.0.113.7/32"]
    web = annotations(kube_admin, ns, "web")
    assert web[DENYLIST] == WEB_ANNOTATIONS[DENYLIST] + ",198.51.100.9/32,203.0.113.7/32"
    assert json.loads(web[record_key("inc-bf-1")])["denylist"]["previous"] == WEB_ANNOTATIONS[DENYLIST] + ",198.51.100.9/32"
