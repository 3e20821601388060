"""Hostile input against ``ingress_block``: names with traversal, separators, control bytes, upper case
or too long; selectors that are not labels; CIDRs that are not ranges; regular expressions that do not
compile, are huge or lack the address group; numbers out of range. Every case (every other one in
check mode) is a clean failure of the module's own, and no Ingress changes."""

from __future__ import annotations

import json
import typing as t
import uuid

import pytest

from tests.harness.collection import run_module
from tests.harness.hostile import CONTROL, TOO_LONG, TRAVERSAL, assert_clean_failure
from tests.harness.k8s import ADMIN_TOKEN, namespace

BAD_NAMES = TRAVERSAL + CONTROL + TOO_LONG + ["Upper", "a_b", "-dash"]
ING = ("networking.k8s.io/v1", "ingresses")


@pytest.fixture(scope="module")
def place(kube_cluster, kube_admin) -> t.Iterator[str]:
    ns = "hostile-ib-" + uuid.uuid4().hex[:8]
    namespace(kube_admin, ns, {"runbook.test/hostile": "true"})
    kube_admin.create(*ING, body={"metadata": {"name": "web", "namespace": ns, "annotations": {"owner": "platform"}},
                                  "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}},
                      namespace=ns)
    yield ns
    kube_admin.delete("v1", "namespaces", ns, missing_ok=True)


@pytest.fixture
def unchanged(kube_admin, place):
    def state() -> t.Dict[str, str]:
        return {obj["metadata"]["name"]: obj["metadata"]["resourceVersion"] for obj in kube_admin.list(*ING, namespace=place)}
    before = state()
    yield
    assert state() == before


def args(cluster, ns: str, **extra: t.Any) -> dict:
    base = dict(cluster.auth(), namespace=ns, incident_id="inc-hostile", log_sources=[{"label_selector": "app=web"}])
    base.update(extra)
    return base


CASES: t.List[t.Tuple[str, t.Any, str]] = (
    [("namespace", v, "namespace") for v in BAD_NAMES + [""]]
    + [("incident_id", v, "incident_id") for v in BAD_NAMES + ["", "inc-1\n", "inc-" + "1" * 54]]
    + [("ingresses", [v], "ingresses[0]") for v in TRAVERSAL + CONTROL + TOO_LONG + ["Upper"]]
    + [("exclude", [v], "exclude[0]") for v in ["10.0.0.0/33", "../outside", "with\x00nul", "x" * 300, "1.2.3.4/-1",
                                                "203.0.113.0/24,10.0.0.0/8"]]
    + [("pattern", v, "pattern") for v in ["(unclosed", "x" * 5000, "", "a\x00b", "(?P<x>a)(?P<x>b)"]]
    + [("address_pattern", v, "address_pattern") for v in ["(\\d+)", "(?P<address>[", "y" * 5000, "\n"]]
    + [("top", v, "top") for v in [0, -1, 10 ** 12]]
    + [("min_failures", v, "min_failures") for v in [0, -5]]
    + [("tail_lines", v, "tail_lines") for v in [0, -1]]
    + [("log_limit_bytes", v, "log_limit_bytes") for v in [0, -1, 1 << 60]]
    + [("since", v, "since") for v in ["0", "-5m", "nan", "whenever", "1e308", "500d"]]
    + [("rate_limit_rps", v, "rate_limit_rps") for v in [0, -1, 10 ** 9]]
)

SOURCES: t.List[t.Tuple[dict, str]] = (
    [({"label_selector": v}, "label_selector") for v in ["app in (a,b)", "app!=x", "a=b=c", "../outside=x",
                                                         "app=with\x00nul", "app=" + "x" * 64, "=x", ",", "app"]]
    + [({"label_selector": v}, "label_selector") for v in [{"app": "a,b=c"}, {"app": ["x"]}, {"../x": "y"},
                                                           {"app": {"nested": 1}}, 5]]
    + [({"pod": v}, "pod") for v in BAD_NAMES]
    + [({"pod": "web-0", "container": v}, "container") for v in BAD_NAMES]
    + [({"pod": "web-0", "namespace": v}, "namespace") for v in BAD_NAMES]
)


@pytest.mark.parametrize("option, value, words, check_mode", [case + (index % 2 == 1,) for index, case in enumerate(CASES)])
def test_hostile_options_are_refused(kube_cluster, place, unchanged, option, value, words, check_mode):
    result = run_module("ingress_block", args(kube_cluster, place, **{option: value}), check_mode=check_mode)
    msg = assert_clean_failure(result, secrets=[ADMIN_TOKEN])
    assert words in msg, msg


@pytest.mark.parametrize("source, words", SOURCES)
def test_hostile_log_sources_are_refused(kube_cluster, place, unchanged, source, words):
    result = run_module("ingress_block", args(kube_cluster, place, log_sources=[source]))
    msg = assert_clean_failure(result, secrets=[ADMIN_TOKEN], mentions=["log_sources[0]"])
    assert words in msg, msg


@pytest.mark.parametrize("record", ["[]", "null", "{not json", json.dumps({"incident_id": "other"}),
                                    json.dumps({"incident_id": "inc-hostile", "denylist": {"added": "0.0.0.0/0"}})])
def test_a_planted_record_is_refused_and_nothing_changes(kube_cluster, kube_admin, place, record):
    key = "runbook.ops/block-inc-hostile"
    kube_admin.modify(*ING, name="web", namespace=place,
                      mutate=lambda obj: obj["metadata"]["annotations"].update({key: record}) or obj)
    try:
        version = kube_admin.get(*ING, name="web", namespace=place)["metadata"]["resourceVersion"]
        for extra in ({"state": "released"}, {"method": "rate_limit", "log_sources": []}):
            result = run_module("ingress_block", args(kube_cluster, place, **extra))
            assert_clean_failure(result, secrets=[ADMIN_TOKEN], mentions=[key, "Ingress/%s/web" % place])
        assert kube_admin.get(*ING, name="web", namespace=place)["metadata"]["resourceVersion"] == version
    finally:
        kube_admin.modify(*ING, name="web", namespace=place,
                          mutate=lambda obj: obj["metadata"]["annotations"].pop(key, None) and obj)
