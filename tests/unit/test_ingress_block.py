"""Pure logic of ingress_block: addresses, ranking, the denylist merge and unmerge, the record."""

from __future__ import annotations

import collections
import ipaddress
import json
import re

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._ingress_block import (
    DENYLIST, LIMIT_CONNECTIONS, LIMIT_RPS, LITERAL_ADDRESSES, BlockOptions, apply_block, count_failures, covered,
    host_cidr, label_selector, line_address, merge_denylist, normalise_address, rank, record_key, release_block,
    unmerge_denylist,
)
from tests.harness.tasks import InvalidParams, validated

ADDRESSES = re.compile(LITERAL_ADDRESSES)
FAILED = re.compile("authentication_failed")
NOW = "2026-12-06T18:00:00Z"


def ip(text: str):
    return ipaddress.ip_address(text)


def options(**params) -> BlockOptions:
    base = dict(namespace="auth", incident_id="inc-1", log_sources=[{"label_selector": "app=auth"}])
    base.update(params)
    return BlockOptions.from_params(validated("ingress_block", base))


# ----------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize("line, expected", [
    ('{"msg":"authentication_failed","ip":"203.0.113.7"}', "203.0.113.7"),
    ("client ip:198.51.100.4 port 5544", "198.51.100.4"),
    ('2001:db8::66 - - [06/Dec/2026:18:20:00 +0000] "POST /login HTTP/1.1" 401', "2001:db8::66"),
    ("from ::ffff:192.0.2.9 at 12:30:45", "192.0.2.9"),  # IPv4-mapped folded
    ("peer [2001:DB8::1]:443", "2001:db8::1"),
    ("x 256.1.1.1 y 10.0.0.1", "10.0.0.1"),  # not an address, then one
    ("ts=2026-12-06T18:20:00.123Z v1.2.3.4 mac aa:bb:cc:dd:ee:ff", None),
    ("authentication_failed user=bob", None),
])
def test_line_address_finds_the_first_real_address(line, expected):
    found = line_address(line, ADDRESSES)
    assert (str(found) if found else None) == expected


def test_normalise_address_folds_mapped_and_drops_zone():
    assert normalise_address("::ffff:203.0.113.7") == ip("203.0.113.7")
    assert normalise_address("fe80::1%eth0") == ip("fe80::1")
    assert normalise_address("2001:0DB8:0000::0001") == ip("2001:db8::1")
    assert normalise_address("not-an-address") is None
    assert host_cidr(ip("203.0.113.7")) == "203.0.113.7/32"
    assert host_cidr(ip("2001:db8::1")) == "2001:db8::1/128"


def test_a_line_counts_once_for_its_first_address():
    counts: collections.Counter = collections.Counter()
    lines = ["authentication_failed from 203.0.113.7 via 10.0.0.5",  # one failure, the first address
             "authentication_failed from 203.0.113.7",
             "authentication_failed from ::ffff:203.0.113.7",
             "login ok from 198.51.100.1",  # no match
             "authentication_failed for user bob",  # matched, no address
             "authentication_failed authentication_failed 2001:db8::66"]
    counted = count_failures(lines, FAILED, ADDRESSES, counts)
    assert counted.matched == 5 and counted.unattributed == 1
    assert counts == {ip("203.0.113.7"): 3, ip("2001:db8::66"): 1}


def test_custom_address_pattern_picks_the_named_group():
    pattern = re.compile(r'"client_ip":"(?P<address>[^"]+)"')
    line = '{"server":"10.1.2.3","client_ip":"198.51.100.20","msg":"authentication_failed"}'
    assert line_address(line, pattern) == ip("198.51.100.20")
    assert line_address('{"client_ip":"garbage"}', pattern) is None


# ----------------------------------------------------------------------------------------------
# Ranking


def test_rank_orders_filters_and_caps():
    counts = {ip("203.0.113.7"): 50, ip("198.51.100.4"): 50, ip("2001:db8::66"): 30, ip("192.0.2.1"): 9,
              ip("127.0.0.1"): 99, ip("::1"): 99, ip("0.0.0.0"): 80, ip("10.1.2.3"): 70, ip("203.0.113.9"): 12}
    exclude = [ipaddress.ip_network("10.0.0.0/8")]
    ranking = rank(counts, exclude, min_failures=10, top=3)
    # ties by address, IPv4 before IPv6
    assert ranking.offenders == [(ip("198.51.100.4"), 50), (ip("203.0.113.7"), 50), (ip("2001:db8::66"), 30)]
    assert ranking.beyond_top == [(ip("203.0.113.9"), 12)]
    assert {str(a): why for a, _n, why in ranking.excluded} == {
        "127.0.0.1": "loopback", "::1": "loopback", "0.0.0.0": "unspecified", "10.1.2.3": "exclude 10.0.0.0/8"}
    assert ip("192.0.2.1") not in [pair[0] for pair in ranking.offenders + ranking.beyond_top]  # below min_failures


def test_rank_of_nothing_is_empty():
    assert rank({}, [], 1, 10) == ([], [], [])


# ----------------------------------------------------------------------------------------------
# The denylist annotation


def test_merge_keeps_existing_text_and_adds_only_what_is_not_denied():
    current = "192.0.2.0/24, 198.51.100.4"
    value, added = merge_denylist(current, [ip("192.0.2.55"), ip("198.51.100.4"), ip("203.0.113.7"),
                                            ip("2001:db8::66"), ip("203.0.113.7")])
    assert added == ["203.0.113.7/32", "2001:db8::66/128"]
    assert value == "192.0.2.0/24, 198.51.100.4,203.0.113.7/32,2001:db8::66/128"
    assert merge_denylist(value, [ip("203.0.113.7")]) == (value, [])
    assert merge_denylist(None, [ip("203.0.113.7")]) == ("203.0.113.7/32", ["203.0.113.7/32"])
    assert merge_denylist("  ", [ip("203.0.113.7")])[0] == "203.0.113.7/32"
    assert merge_denylist("10.0.0.1/32,", [ip("203.0.113.7")])[0] == "10.0.0.1/32,203.0.113.7/32"
    assert covered(ip("203.0.113.7"), ["::ffff:203.0.113.7/128"])
    assert not covered(ip("203.0.113.7"), ["not-a-cidr", "2001:db8::/32"])


def test_unmerge_restores_the_text_from_before_exactly():
    before = "192.0.2.0/24, 198.51.100.4"
    value, added = merge_denylist(before, [ip("203.0.113.7"), ip("203.0.113.8")])
    assert unmerge_denylist(value, added, before) == (before, added)
    assert unmerge_denylist("203.0.113.7/32", ["203.0.113.7/32"], None) == (None, ["203.0.113.7/32"])


def test_unmerge_leaves_entries_added_meanwhile():
    before = "192.0.2.0/24"
    value, added = merge_denylist(before, [ip("203.0.113.7")])
    meanwhile = value + ",198.51.100.99/32"
    assert unmerge_denylist(meanwhile, added, before) == ("192.0.2.0/24,198.51.100.99/32", ["203.0.113.7/32"])
    # An added entry someone removed already: nothing to remove, nothing changes.
    assert unmerge_denylist("192.0.2.0/24", added, before) == ("192.0.2.0/24", [])
    # Every entry from before removed meanwhile, ours removed now: the annotation goes.
    assert unmerge_denylist("203.0.113.7/32", added, before) == (None, ["203.0.113.7/32"])


# ----------------------------------------------------------------------------------------------
# The record: block, block again, release


def block(annotations, addresses=(), method="denylist", limits=None, incident="inc-1"):
    return apply_block(annotations, incident_id=incident, method=method, addresses=[ip(a) for a in addresses],
                       limits=limits or {}, now=NOW, where="Ingress/auth/web")


def test_block_then_block_again_then_release_round_trip():
    original = {"owner": "platform", DENYLIST: "192.0.2.0/24"}
    first, change = block(original, ["203.0.113.7", "192.0.2.9"])
    assert change.added == ["203.0.113.7/32"] and change.already_denied == ["192.0.2.9/32"]
    assert first[DENYLIST] == "192.0.2.0/24,203.0.113.7/32"
    record = json.loads(first[record_key("inc-1")])
    assert record["denylist"] == {"added": ["203.0.113.7/32"], "previous": "192.0.2.0/24"}
    assert record["incident_id"] == "inc-1" and record["created"] == NOW

    same, change = block(first, ["203.0.113.7"])
    assert same == first and change.added == []  # idempotent, the record untouched

    second, change = block(first, ["203.0.113.7", "2001:db8::66"])
    assert change.added == ["2001:db8::66/128"]
    assert json.loads(second[record_key("inc-1")])["denylist"] == {
        "added": ["203.0.113.7/32", "2001:db8::66/128"], "previous": "192.0.2.0/24"}

    someone = dict(second, **{DENYLIST: second[DENYLIST] + ",198.51.100.1/32"})
    released, change = release_block(someone, incident_id="inc-1", where="Ingress/auth/web")
    assert change.removed == ["203.0.113.7/32", "2001:db8::66/128"]
    assert released == {"owner": "platform", DENYLIST: "192.0.2.0/24,198.51.100.1/32"}
    assert release_block(second, incident_id="inc-1", where="x")[0] == original
    unchanged, nothing = release_block(original, incident_id="inc-1", where="x")
    assert unchanged == original and nothing == ([], [], [], {}, {}, [])


def test_block_with_no_offender_writes_no_record():
    assert block({"owner": "x"}, [])[0] == {"owner": "x"}


def test_two_incidents_release_independently():
    a = block({}, ["203.0.113.7"], incident="inc-a")[0]
    ab = block(a, ["203.0.113.8"], incident="inc-b")[0]
    without_a, change = release_block(ab, incident_id="inc-a", where="x")
    assert change.removed == ["203.0.113.7/32"]
    assert without_a[DENYLIST] == "203.0.113.8/32" and record_key("inc-b") in without_a
    assert release_block(without_a, incident_id="inc-b", where="x")[0] == {}


def test_rate_limit_round_trip_and_a_value_changed_meanwhile():
    original = {LIMIT_RPS: "50"}
    limited, change = block(original, method="rate_limit", limits={LIMIT_RPS: "5", LIMIT_CONNECTIONS: "3"})
    assert limited[LIMIT_RPS] == "5" and limited[LIMIT_CONNECTIONS] == "3"
    assert change.set == {LIMIT_RPS: "5", LIMIT_CONNECTIONS: "3"}
    record = json.loads(limited[record_key("inc-1")])["rate_limit"]
    assert record == {"set": {LIMIT_RPS: "5", LIMIT_CONNECTIONS: "3"}, "previous": {LIMIT_RPS: "50", LIMIT_CONNECTIONS: None}}
    again, change = block(limited, method="rate_limit", limits={LIMIT_RPS: "5", LIMIT_CONNECTIONS: "3"})
    assert again == limited and not change.set
    tighter = block(limited, method="rate_limit", limits={LIMIT_RPS: "2"})[0]
    assert json.loads(tighter[record_key("inc-1")])["rate_limit"]["previous"][LIMIT_RPS] == "50"  # still from before
    assert release_block(tighter, incident_id="inc-1", where="x")[0] == original
    edited = dict(limited, **{LIMIT_CONNECTIONS: "9"})
    released, change = release_block(edited, incident_id="inc-1", where="x")
    assert released == {LIMIT_RPS: "50", LIMIT_CONNECTIONS: "9"} and change.kept == [LIMIT_CONNECTIONS]


@pytest.mark.parametrize("text", ["not json", "[]", '{"incident_id": "inc-2"}', '{"incident_id": "inc-1", "denylist": 5}',
                                  '{"incident_id": "inc-1", "rate_limit": {"set": []}}',
                                  '{"incident_id": "inc-1", "denylist": {"added": [5]}}',
                                  '{"incident_id": "inc-1", "denylist": {"added": [], "previous": 1}}',
                                  '{"incident_id": "inc-1", "denylist": []}',
                                  '{"incident_id": "inc-1", "rate_limit": {"set": {"a": 1}, "previous": {}}}'])
def test_a_damaged_record_is_refused(text):
    with pytest.raises(RunbookError, match="not a readable block record"):
        release_block({record_key("inc-1"): text}, incident_id="inc-1", where="Ingress/auth/web")
    with pytest.raises(RunbookError, match="not a readable block record"):
        block({record_key("inc-1"): text}, ["203.0.113.7"])


# ----------------------------------------------------------------------------------------------
# Options


def test_options_defaults_and_parsing():
    opts = options(exclude=["10.0.0.1/8", "2001:db8::/32"], since="2h",
                   log_sources=[{"label_selector": {"app": "auth", "tier": "api"}, "container": "app"},
                                {"namespace": "ingress-nginx", "pod": "controller-0"}])
    assert opts.state == "blocked" and opts.method == "denylist" and opts.top == 10 and opts.min_failures == 10
    assert opts.since == 7200.0 and opts.pattern.pattern == "authentication_failed"
    assert [str(n) for n in opts.exclude] == ["10.0.0.0/8", "2001:db8::/32"]
    assert [str(n) for n in options(exclude=["::ffff:10.0.0.0/104", "::ffff:192.0.2.7"]).exclude] == [
        "10.0.0.0/8", "192.0.2.7/32"]
    assert opts.log_sources[0].label_selector == "app=auth,tier=api" and opts.log_sources[0].namespace == "auth"
    assert opts.log_sources[1].pod == "controller-0" and opts.log_sources[1].namespace == "ingress-nginx"
    assert opts.ingresses is None
    assert label_selector("s", " app = auth , tier=api") == "app=auth,tier=api"


@pytest.mark.parametrize("params, words", [
    ({"incident_id": "../etc"}, "incident_id"),
    ({"incident_id": "Inc-1"}, "incident_id"),
    ({"incident_id": "inc-1\n"}, "incident_id"),
    ({"incident_id": "a" * 58}, "57"),
    ({"namespace": "a/b"}, "namespace"),
    ({"ingresses": ["../x"]}, "ingresses[0]"),
    ({"exclude": ["10.0.0.0/33"]}, "exclude[0]"),
    ({"exclude": ["10.0.0.0/8\x00"]}, "exclude[0]"),
    ({"exclude": ["evil.example"]}, "exclude[0]"),
    ({"pattern": "(unclosed"}, "not a valid regular expression"),
    ({"pattern": "x" * 1025}, "at most 1024"),
    ({"pattern": ""}, "pattern is empty"),
    ({"address_pattern": r"(\d+\.\d+\.\d+\.\d+)"}, "group named address"),
    ({"address_pattern": "(?P<address>["}, "address_pattern"),
    ({"top": 0}, "top"),
    ({"min_failures": -1}, "min_failures"),
    ({"since": "0s"}, "since"),
    ({"since": "soon"}, "since"),
    ({"log_limit_bytes": 0}, "log_limit_bytes"),
    ({"log_sources": [{"label_selector": "app in (a,b)"}]}, "label_selector"),
    ({"log_sources": [{"label_selector": "app!=a"}]}, "label_selector"),
    ({"log_sources": [{"label_selector": {"app": "a,b=c"}}]}, "label_selector"),
    ({"log_sources": [{"label_selector": "app=x", "namespace": "../kube-system"}]}, "log_sources[0].namespace"),
    ({"log_sources": [{"pod": "a/b"}]}, "log_sources[0].pod"),
    ({"log_sources": [{"pod": "web", "container": "App_1"}]}, "log_sources[0].container"),
    ({"log_sources": []}, "log_sources is empty"),
    ({"state": "ranked", "log_sources": []}, "log_sources is empty"),
])
def test_hostile_options_are_refused_with_the_option_named(params, words):
    with pytest.raises(RunbookError) as caught:
        options(**params)
    assert words in caught.value.msg


def test_rate_limit_and_release_need_no_log_source():
    assert options(method="rate_limit", log_sources=[]).rate_limit_rps == 5
    assert options(state="released", log_sources=[]).state == "released"


def test_the_argument_spec_refuses_a_source_with_both_or_neither():
    with pytest.raises(InvalidParams):
        validated("ingress_block", dict(namespace="a", incident_id="i", log_sources=[{"pod": "p", "label_selector": "a=b"}]))
    with pytest.raises(InvalidParams):
        validated("ingress_block", dict(namespace="a", incident_id="i", log_sources=[{"container": "c"}]))
    with pytest.raises(InvalidParams):
        validated("ingress_block", dict(namespace="a"))
