# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``ingress_block``: rank the source addresses of failed logins from container logs read through
the API, and block the worst ones reversibly on ingress-nginx Ingresses.

Ranking: every log line that matches ``pattern`` counts once, for the first text in it that
``address_pattern`` finds and :mod:`ipaddress` accepts (IPv4-mapped IPv6 folded to IPv4). A log read
twice through overlapping sources is counted once. Loopback, unspecified and ``exclude`` addresses
are never offenders.

Blocking is recorded on each Ingress, in the annotation ``runbook.ops/block-<incident_id>`` (JSON):
the denylist entries this incident added and the annotation values from before it touched them.
Releasing removes exactly those entries (entries added meanwhile by anyone else stay) and puts the
rate-limit values back, then drops the record. Every write is a read-change-write with the
resourceVersion read (:meth:`K8sClient.modify`), recomputed from the fresh object after a 409.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import ipaddress
import json
import re
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, utcnow,
)
from ansible_collections.runbook.ops.plugins.module_utils._findings import Finding, finding, judged
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sForbidden, K8sObject, K8sUnreachable, object_ref, reports_api_requests, resource_path,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    duration, int_in, k8s_name, label_key, label_value, no_control, shown,
)
from ansible_collections.runbook.ops.plugins.module_utils._quarantine import check_incident_id

IPAddress = t.Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = t.Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Annotations = t.Dict[str, str]

ING = ("networking.k8s.io/v1", "ingresses")
NGINX = "nginx.ingress.kubernetes.io/"
DENYLIST = NGINX + "denylist-source-range"
LIMIT_RPS = NGINX + "limit-rps"
LIMIT_CONNECTIONS = NGINX + "limit-connections"
RECORD_PREFIX = "runbook.ops/block-"
RECORD_VERSION = 1
# An annotation key's name part holds at most 63 characters: "block-" leaves 57 for the incident id.
MAX_INCIDENT_ID = 63 - len("block-")
MAX_PATTERN = 1024
MAX_LOG_BYTES = 1 << 34
MAX_SINCE = 366 * 86400.0

_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
# IPv4 not inside a longer dotted or alphanumeric token; IPv6 (also with an IPv4 tail) not inside a
# longer hex/colon token. ipaddress decides afterwards whether a candidate is an address.
LITERAL_ADDRESSES = (
    r"(?P<address>(?<![0-9A-Za-z.:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:" + _IPV4 + r"|[0-9A-Fa-f]{0,4})(?![0-9A-Za-z.:])"
    r"|(?<![0-9A-Za-z.])" + _IPV4 + r"(?![0-9.]))")


# ----------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class LogSource:
    """Pods whose container logs are read: by label selector or by name, in one namespace."""

    namespace: str
    label_selector: t.Optional[str]  # "k=v,k2=v2", checked
    pod: t.Optional[str]
    container: t.Optional[str]

    def describe(self) -> str:
        which = "Pod %s" % self.pod if self.pod else "Pods %s" % self.label_selector
        return "%s in namespace %s%s" % (which, self.namespace, ", container %s" % self.container if self.container else "")


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """The options of ``ingress_block``, every name, selector, pattern and address checked first."""

    namespace: str
    incident_id: str
    state: str
    log_sources: t.List[LogSource]
    since: float
    tail_lines: t.Optional[int]
    log_limit_bytes: int
    pattern: t.Pattern[str]
    address_pattern: t.Pattern[str]
    top: int
    min_failures: int
    exclude: t.List[IPNetwork]
    ingresses: t.Optional[t.List[str]]
    method: str
    rate_limit_rps: int
    rate_limit_connections: t.Optional[int]

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "BlockOptions":
        namespace = k8s_name("namespace", params["namespace"], label=True)
        incident_id = check_incident_id(params["incident_id"])
        if len(incident_id) > MAX_INCIDENT_ID:
            raise RunbookError("incident_id %s is longer than %d characters, which the record annotation %s<incident_id> "
                               "allows" % (shown(incident_id), MAX_INCIDENT_ID, RECORD_PREFIX))
        sources = [_log_source(index, raw, namespace) for index, raw in enumerate(params["log_sources"])]
        if params["state"] == "ranked" or (params["state"] == "blocked" and params["method"] == "denylist"):
            if not sources:
                raise RunbookError("log_sources is empty: state=%s%s ranks addresses from logs, so name at least one "
                                   "source (label_selector or pod)" % (
                                       params["state"], " with method=denylist" if params["state"] == "blocked" else ""))
        if params["tail_lines"] is not None:
            int_in("tail_lines", params["tail_lines"], 1, 10 ** 9)
        int_in("log_limit_bytes", params["log_limit_bytes"], 1, MAX_LOG_BYTES)
        int_in("top", params["top"], 1, 10000)
        int_in("min_failures", params["min_failures"], 1, 10 ** 9)
        int_in("rate_limit_rps", params["rate_limit_rps"], 1, 10 ** 6)
        if params["rate_limit_connections"] is not None:
            int_in("rate_limit_connections", params["rate_limit_connections"], 1, 10 ** 6)
        ingresses = None
        if params["ingresses"]:
            ingresses = [k8s_name("ingresses[%d]" % i, name) for i, name in enumerate(params["ingresses"])]
        return options_from(
            cls, params, namespace=namespace, incident_id=incident_id, log_sources=sources, ingresses=ingresses,
            since=duration("since", params["since"], 1.0, MAX_SINCE),
            pattern=compile_pattern("pattern", params["pattern"]),
            address_pattern=compile_pattern("address_pattern", params["address_pattern"], group="address")
            if params["address_pattern"] is not None else re.compile(LITERAL_ADDRESSES),
            exclude=[parse_cidr("exclude[%d]" % i, text) for i, text in enumerate(params["exclude"])])


def _log_source(index: int, raw: t.Mapping[str, t.Any], namespace: str) -> LogSource:
    what = "log_sources[%d]" % index
    ns = k8s_name("%s.namespace" % what, raw["namespace"], label=True) if raw["namespace"] else namespace
    pod = k8s_name("%s.pod" % what, raw["pod"]) if raw["pod"] else None
    container = k8s_name("%s.container" % what, raw["container"], label=True) if raw["container"] else None
    selector = None
    if raw["label_selector"] not in (None, "", {}):
        selector = label_selector("%s.label_selector" % what, raw["label_selector"])
    if (pod is None) == (selector is None):
        raise RunbookError("%s needs exactly one of label_selector and pod" % what)
    return LogSource(ns, selector, pod, container)


def label_selector(what: str, value: t.Any) -> str:
    """A selector of equality terms, from a mapping or ``k=v,k2=v2``, as the API's query text.
    Set-based and negated terms are refused: a selector typed during an incident stays readable."""
    if isinstance(value, dict):
        pairs = [(str(k), "" if v is None else str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        pairs = []
        for term in no_control(what, value).split(","):
            key, sep, val = term.strip().partition("=")
            if not sep or val.startswith("=") or key.endswith("!"):
                raise RunbookError("%s %s is not a list of key=value terms (for example app=auth-service,tier=api)"
                                   % (what, shown(value)))
            pairs.append((key.strip(), val.strip()))
    else:
        raise RunbookError("%s must be a mapping of labels or key=value text, not %s" % (what, shown(value)))
    if not pairs:
        raise RunbookError("%s is empty" % what)
    checked = [(label_key("%s key" % what, k), label_value("%s[%s]" % (what, k), v)) for k, v in pairs]
    return ",".join("%s=%s" % kv for kv in sorted(checked))


def compile_pattern(what: str, text: t.Any, group: t.Optional[str] = None) -> t.Pattern[str]:
    """A user's regular expression, bounded in length, compiled, with the named ``group`` it must have."""
    text = no_control(what, text)
    if not text:
        raise RunbookError("%s is empty" % what)
    if len(text) > MAX_PATTERN:
        raise RunbookError("%s is %d characters long; at most %d are accepted" % (what, len(text), MAX_PATTERN))
    try:
        compiled = re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise RunbookError("%s %s is not a valid regular expression: %s" % (what, shown(text), exc))
    if group and group not in compiled.groupindex:
        raise RunbookError("%s %s has no group named %s; write (?P<%s>...) around the address"
                           % (what, shown(text), group, group))
    return compiled


def parse_cidr(what: str, text: t.Any) -> IPNetwork:
    """An address or range (``10.0.0.0/8``, ``2001:db8::/32``, ``192.0.2.7``); host bits may be set."""
    text = no_control(what, text).strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RunbookError("%s %s is not an IP address or CIDR range (for example 10.0.0.0/8 or 2001:db8::/32)"
                           % (what, shown(text)))
    return _folded(network)


def _folded(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 range (``::ffff:10.0.0.0/104``) as the IPv4 range it maps, since addresses are folded too."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network("%s/%d" % (mapped, network.prefixlen - 96))
    return network


# ----------------------------------------------------------------------------------------------
# Addresses and ranking (pure)


def normalise_address(text: str) -> t.Optional[IPAddress]:
    """The address in ``text`` (a zone id dropped, IPv4-mapped IPv6 folded to IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def never_blocked(address: IPAddress, exclude: t.Sequence[IPNetwork]) -> t.Optional[str]:
    """Why ``address`` must not be blocked (loopback, unspecified, an ``exclude`` range), or None."""
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    for network in exclude:
        if address.version == network.version and address in network:
            return "exclude %s" % network
    return None


def line_address(line: str, address_pattern: t.Pattern[str]) -> t.Optional[IPAddress]:
    """The first text ``address_pattern`` finds in ``line`` that is an IP address."""
    for match in address_pattern.finditer(line):
        found = match.group("address")
        address = normalise_address(found) if found else None
        if address is not None:
            return address
    return None


class LineCount(t.NamedTuple):
    matched: int
    unattributed: int  # matched lines in which no address was found


def count_failures(lines: t.Iterable[str], pattern: t.Pattern[str], address_pattern: t.Pattern[str],
                   counts: "collections.Counter[IPAddress]") -> LineCount:
    """Add one failure per matching line to ``counts``, for the line's address."""
    matched = unattributed = 0
    for line in lines:
        if not pattern.search(line):
            continue
        matched += 1
        address = line_address(line, address_pattern)
        if address is None:
            unattributed += 1
        else:
            counts[address] += 1
    return LineCount(matched, unattributed)


def host_cidr(address: IPAddress) -> str:
    """One address as a network: ``/32`` or ``/128``."""
    return "%s/%d" % (address, address.max_prefixlen)


class Ranking(t.NamedTuple):
    offenders: t.List[t.Tuple[IPAddress, int]]  # the ones to block, worst first
    beyond_top: t.List[t.Tuple[IPAddress, int]]  # reached min_failures, left out by top
    excluded: t.List[t.Tuple[IPAddress, int, str]]  # reached min_failures, never blocked


def rank(counts: t.Mapping[IPAddress, int], exclude: t.Sequence[IPNetwork], min_failures: int, top: int) -> Ranking:
    """Addresses with at least ``min_failures``, worst first (ties by address), at most ``top``."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0].version, int(item[0])))
    offenders: t.List[t.Tuple[IPAddress, int]] = []
    excluded: t.List[t.Tuple[IPAddress, int, str]] = []
    for address, failures in ordered:
        if failures < min_failures:
            break
        reason = never_blocked(address, exclude)
        if reason:
            excluded.append((address, failures, reason))
        else:
            offenders.append((address, failures))
    return Ranking(offenders[:top], offenders[top:], excluded)


# ----------------------------------------------------------------------------------------------
# The annotations: merge and unmerge (pure)


def denylist_entries(value: t.Optional[str]) -> t.List[str]:
    return [entry.strip() for entry in (value or "").split(",") if entry.strip()]


def _as_network(entry: str) -> t.Optional[IPNetwork]:
    try:
        return _folded(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        return None


def covered(address: IPAddress, entries: t.Sequence[str]) -> bool:
    """Whether an entry of a denylist already denies ``address``."""
    for entry in entries:
        network = _as_network(entry)
        if network is not None and network.version == address.version and address in network:
            return True
    return False


def merge_denylist(current: t.Optional[str], addresses: t.Sequence[IPAddress]) -> t.Tuple[t.Optional[str], t.List[str]]:
    """``(new value, entries added)``: the addresses not denied yet appended as /32 or /128, the
    existing text (entries, order, spacing) kept as it is."""
    entries = denylist_entries(current)
    added: t.List[str] = []
    for address in addresses:
        if not covered(address, entries + added):
            added.append(host_cidr(address))
    if not added:
        return current, []
    head = (current or "").rstrip().rstrip(",")
    return (head + "," if head.strip() else "") + ",".join(added), added


def unmerge_denylist(current: t.Optional[str], added: t.Sequence[str],
                     previous: t.Optional[str]) -> t.Tuple[t.Optional[str], t.List[str]]:
    """``(new value or None to remove it, entries removed)``: one entry per recorded addition taken
    out. When what is left is the list from before, its text comes back exactly as it was."""
    remaining = denylist_entries(current)
    removed: t.List[str] = []
    for entry in added:
        target = _as_network(entry)
        for index, existing in enumerate(remaining):
            if existing == entry or (target is not None and _as_network(existing) == target):
                removed.append(remaining.pop(index))
                break
    if not removed:
        return current, []
    if remaining == denylist_entries(previous):
        return previous, removed
    return (",".join(remaining) if remaining else None), removed


def record_key(incident_id: str) -> str:
    return RECORD_PREFIX + incident_id


def read_record(annotations: t.Mapping[str, str], incident_id: str, where: str) -> t.Optional[K8sObject]:
    text = annotations.get(record_key(incident_id))
    if text is None:
        return None
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or record.get("incident_id") != incident_id:
            raise ValueError("not this incident's record")
        _check_record_parts(record)
    except (ValueError, TypeError, AttributeError):
        raise RunbookError("the annotation %s on %s is not a readable block record; it was not written by runbook.ops "
                           "or was edited by hand, so nothing was changed" % (record_key(incident_id), where))
    return record


def _check_record_parts(record: K8sObject) -> None:
    """Every value a release would write back or remove is text (or null where nothing was there)."""
    def text(value: t.Any, nullable: bool = False) -> bool:
        return isinstance(value, str) or (nullable and value is None)
    deny = record.get("denylist")
    if deny is not None and not (isinstance(deny["added"], list) and all(text(e) for e in deny["added"])
                                 and text(deny.get("previous"), nullable=True)):
        raise ValueError("denylist is malformed")
    limits = record.get("rate_limit")
    if limits is not None and not (isinstance(limits["set"], dict) and isinstance(limits["previous"], dict)
                                   and all(text(v) for v in limits["set"].values())
                                   and all(text(v, nullable=True) for v in limits["previous"].values())):
        raise ValueError("rate_limit is malformed")


class Change(t.NamedTuple):
    """What one computation did to an Ingress's annotations (``set``/``restored``: annotation -> value)."""

    added: t.List[str]
    already_denied: t.List[str]
    removed: t.List[str]
    set: t.Dict[str, t.Optional[str]]
    restored: t.Dict[str, t.Optional[str]]
    kept: t.List[str]  # rate-limit annotations changed by someone else meanwhile, left as they are


def _stamped(record: K8sObject, old: t.Optional[K8sObject], now: str) -> str:
    """The record's JSON, ``updated`` only moving when its content changed (a rerun stays a no-op)."""
    if old is not None:
        record["created"] = old.get("created", now)
        record["updated"] = old.get("updated")
        if record == old:
            return json.dumps(old, sort_keys=True)
    record.setdefault("created", now)
    record["updated"] = now
    return json.dumps(record, sort_keys=True)


def apply_block(annotations: Annotations, *, incident_id: str, method: str, addresses: t.Sequence[IPAddress],
                limits: t.Mapping[str, str], now: str, where: str) -> t.Tuple[Annotations, Change]:
    """The annotations with this incident's block added (``addresses`` for the denylist, ``limits``
    for rate_limit) and its record updated; pure, so a retry after a conflict recomputes it."""
    new = dict(annotations)
    old = read_record(annotations, incident_id, where)
    record: K8sObject = json.loads(json.dumps(old)) if old else {"version": RECORD_VERSION, "incident_id": incident_id}
    change = Change([], [], [], {}, {}, [])
    if method == "denylist":
        value, added = merge_denylist(annotations.get(DENYLIST), addresses)
        change.already_denied.extend(host_cidr(a) for a in addresses if host_cidr(a) not in added)
        if added:
            part = record.setdefault("denylist", {"added": [], "previous": annotations.get(DENYLIST)})
            new[DENYLIST] = t.cast(str, value)
            part["added"] = part["added"] + added
            change.added.extend(added)
            change.set[DENYLIST] = value
    else:
        part = record.setdefault("rate_limit", {"set": {}, "previous": {}})
        for key, value in limits.items():
            if key not in part["previous"]:
                part["previous"][key] = annotations.get(key)
            part["set"][key] = value
            if annotations.get(key) != value:
                new[key] = value
                change.set[key] = value
    if old is None and not change.set:
        return annotations, change  # nothing to block here: no record either
    new[record_key(incident_id)] = _stamped(record, old, now)
    return new, change


def release_block(annotations: Annotations, *, incident_id: str, where: str) -> t.Tuple[Annotations, Change]:
    """The annotations with exactly what this incident's record lists taken back, and no record."""
    record = read_record(annotations, incident_id, where)
    change = Change([], [], [], {}, {}, [])
    if record is None:
        return annotations, change
    new = dict(annotations)
    del new[record_key(incident_id)]
    deny = record.get("denylist")
    if deny:
        value, removed = unmerge_denylist(annotations.get(DENYLIST), deny["added"], deny.get("previous"))
        change.removed.extend(removed)
        if removed:
            _put(new, DENYLIST, value)
            change.restored[DENYLIST] = value
    limits = record.get("rate_limit")
    if limits:
        for key, value in limits["set"].items():
            if annotations.get(key) != value:
                change.kept.append(key)
                continue
            previous = limits["previous"].get(key)
            _put(new, key, previous)
            change.restored[key] = previous
    return new, change


def _put(annotations: Annotations, key: str, value: t.Optional[str]) -> None:
    if value is None:
        annotations.pop(key, None)
    else:
        annotations[key] = value


# ----------------------------------------------------------------------------------------------
# Reading the logs


class LogRead(t.NamedTuple):
    entries: t.List[K8sObject]  # one per log: namespace, pod, container, bytes, matched, ... or error
    findings: t.List[Finding]
    counts: "collections.Counter[IPAddress]"


def _source_pods(client: K8sClient, source: LogSource, findings: t.List[Finding]) -> t.List[K8sObject]:
    try:
        if source.pod:
            pod = client.get("v1", "pods", source.pod, source.namespace, missing_ok=True)
            pods = [pod] if pod else []
        else:
            pods = client.list("v1", "pods", source.namespace, label_selector=source.label_selector)
    except K8sForbidden as exc:
        findings.append(finding("unknown", "log_sources", "Pod/%s/*" % source.namespace,
                                "%s: the Pods could not be read: %s" % (source.describe(), exc.msg)))
        return []
    if not pods:
        findings.append(finding("warning", "log_sources", "Pod/%s/*" % source.namespace,
                                "%s: no such Pod, so no log was read from this source" % source.describe()))
    return pods


def read_logs(client: K8sClient, opts: BlockOptions) -> LogRead:
    """Read every source's logs once and count the failures per address."""
    entries: t.List[K8sObject] = []
    findings: t.List[Finding] = []
    counts: "collections.Counter[IPAddress]" = collections.Counter()
    seen: t.Set[t.Tuple[str, str, str]] = set()
    bad_nodes: t.Dict[str, str] = {}
    for source in opts.log_sources:
        for pod in _source_pods(client, source, findings):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            names = [c.get("name") for c in spec.get("containers") or []]
            ref = object_ref("Pod", meta["name"], source.namespace)
            if source.container and source.container not in names:
                findings.append(finding("warning", "log_sources", ref, "%s has no container %s (it has %s)"
                                        % (ref, source.container, ", ".join(names))))
                continue
            for container in [source.container] if source.container else names:
                key = (source.namespace, meta["name"], container)
                if key in seen:
                    continue  # overlapping sources: a log counts once
                seen.add(key)
                entry = _read_one(client, opts, pod, container, bad_nodes, counts)
                entries.append(entry)
                findings.extend(_log_findings(entry, ref, opts))
    return LogRead(entries, findings, counts)


def _read_one(client: K8sClient, opts: BlockOptions, pod: K8sObject, container: str, bad_nodes: t.Dict[str, str],
              counts: "collections.Counter[IPAddress]") -> K8sObject:
    meta = pod["metadata"]
    ns, name = meta["namespace"], meta["name"]
    node = (pod.get("spec") or {}).get("nodeName")
    entry: K8sObject = {"namespace": ns, "pod": name, "container": container, "bytes": 0, "lines": 0, "matched": 0,
                        "unattributed": 0, "truncated": False, "error": None}
    if not node:
        entry["error"] = "the Pod is not scheduled on a node: it has no log"
        return entry
    if node in bad_nodes:
        entry["error"] = "not requested: an earlier log request through node %s failed: %s" % (node, bad_nodes[node])
        return entry
    try:
        # One attempt: an unreadable log is reported as such, and asking an unreachable kubelet again costs time.
        data = client.request("GET", resource_path("v1", "pods", ns, name, "log"), {
            "container": container, "sinceSeconds": int(opts.since), "tailLines": opts.tail_lines,
            "limitBytes": opts.log_limit_bytes}, raw=True, retry=False,
            what="read the log of container %s of %s" % (container, object_ref("Pod", name, ns)))
    except K8sUnreachable:
        raise  # the API server itself: nothing else will work either
    except K8sError as exc:
        entry["error"] = exc.msg
        if exc.status >= 500:
            bad_nodes[node] = exc.msg
        return entry
    text = t.cast(bytes, data).decode("utf-8", errors="replace")
    lines = text.splitlines()
    entry["truncated"] = len(data) >= opts.log_limit_bytes
    if entry["truncated"] and lines and not text.endswith("\n"):
        lines.pop()  # cut mid-line by the byte cap: its address may be cut too
    counted = count_failures(lines, opts.pattern, opts.address_pattern, counts)
    entry.update(bytes=len(data), lines=len(lines), matched=counted.matched, unattributed=counted.unattributed)
    return entry


def _log_findings(entry: K8sObject, ref: str, opts: BlockOptions) -> t.List[Finding]:
    details = {"container": entry["container"]}
    if entry["error"]:
        return [finding("unknown", "logs", ref, "the log of container %s could not be read: %s"
                        % (entry["container"], entry["error"]), details)]
    found = []
    if entry["truncated"]:
        found.append(finding("warning", "logs", ref, "the log of container %s reached log_limit_bytes (%d bytes): "
                             "later lines were not read; raise log_limit_bytes or shorten since"
                             % (entry["container"], opts.log_limit_bytes), details))
    if entry["unattributed"]:
        found.append(finding("warning", "logs", ref, "%d matching line(s) of container %s hold no address that "
                             "address_pattern finds" % (entry["unattributed"], entry["container"]), details))
    return found


# ----------------------------------------------------------------------------------------------
# The module's flow


class Outcome(t.NamedTuple):
    entry: K8sObject  # the result's ``ingresses`` item
    before: Annotations
    after: Annotations


def _managed(annotations: t.Mapping[str, str], incident_id: str) -> Annotations:
    """The annotations this module reads or writes, for the diff (never unrelated ones)."""
    keys = (DENYLIST, LIMIT_RPS, LIMIT_CONNECTIONS, record_key(incident_id))
    return {key: annotations[key] for key in keys if key in annotations}


def _annotations(obj: K8sObject) -> Annotations:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def change_ingress(task: Task[BlockOptions], client: K8sClient, obj: K8sObject,
                   compute: t.Callable[[Annotations], t.Tuple[Annotations, Change]]) -> Outcome:
    """Apply ``compute`` to one Ingress's annotations (in check mode only to what was read)."""
    name = obj["metadata"]["name"]
    before = _annotations(obj)
    after, change = compute(before)
    if after != before and not task.check_mode:
        holder: t.List[t.Tuple[Annotations, Change]] = []

        def mutate(current: K8sObject) -> t.Optional[K8sObject]:
            computed = compute(_annotations(current))
            holder[:] = [computed]
            if computed[0] == _annotations(current):
                return None
            current["metadata"]["annotations"] = computed[0] or None
            return current
        _changed, read, _written = client.modify(ING[0], ING[1], name, mutate, task.options.namespace)
        before = _annotations(read)
        after, change = holder[-1]
    entry = {"name": name, "changed": after != before, "added": change.added, "already_denied": change.already_denied,
             "removed": change.removed, "set": change.set, "restored": change.restored,
             "record": record_key(task.options.incident_id) in after}
    for key in change.kept:
        task.warn("%s: %s was changed by someone else since the block; it is left as it is"
                  % (object_ref("Ingress", name, task.options.namespace), key))
    return Outcome(entry, before, after)


def target_ingresses(client: K8sClient, opts: BlockOptions, releasing: bool) -> t.List[K8sObject]:
    if client.get("v1", "namespaces", opts.namespace, missing_ok=True) is None:
        if releasing:
            return []  # nothing is left that could carry a block
        raise RunbookError("namespace %s does not exist; nothing was changed" % opts.namespace)
    if opts.ingresses is None:
        found = client.list(ING[0], ING[1], opts.namespace)
        if not found and not releasing:
            raise RunbookError("namespace %s has no Ingress: nothing to block on, nothing was changed" % opts.namespace)
        return sorted(found, key=lambda obj: obj["metadata"]["name"])
    objects = []
    for name in opts.ingresses:
        obj = client.get(ING[0], ING[1], name, opts.namespace, missing_ok=True)
        if obj is None:
            if not releasing:
                raise RunbookError("%s does not exist; nothing was changed" % object_ref("Ingress", name, opts.namespace))
            continue
        objects.append(obj)
    return objects


def _ranking_findings(ranking: Ranking, blocking: bool, min_failures: int) -> t.List[Finding]:
    found = []
    for address, failures in ranking.offenders:
        details = {"address": str(address), "failures": failures}
        if blocking:
            found.append(finding("info", "offenders", "address/%s" % address,
                                 "%d failed attempt(s); blocked as %s" % (failures, host_cidr(address)), details))
        else:
            found.append(finding("warning", "offenders", "address/%s" % address,
                                 "%d failed attempt(s); not blocked by this task" % failures, details))
    for address, failures in ranking.beyond_top:
        found.append(finding("warning", "offenders", "address/%s" % address, "%d failed attempt(s); not blocked: "
                             "beyond top" % failures, {"address": str(address), "failures": failures}))
    for address, failures, reason in ranking.excluded:
        found.append(finding("info", "offenders", "address/%s" % address, "%d failed attempt(s); never blocked (%s)"
                             % (failures, reason), {"address": str(address), "failures": failures}))
    if not found:
        found.append(finding("ok", "offenders", "*", "no address reached min_failures (%d)" % min_failures))
    return found


def _class_findings(objects: t.Sequence[K8sObject], namespace: str) -> t.List[Finding]:
    found = []
    for obj in objects:
        cls = (obj.get("spec") or {}).get("ingressClassName")
        if cls and "nginx" not in cls:
            found.append(finding("warning", "ingresses", object_ref("Ingress", obj["metadata"]["name"], namespace),
                                 "ingressClassName %s does not look like ingress-nginx: the nginx.ingress.kubernetes.io "
                                 "annotations take effect only with ingress-nginx" % cls))
    return found


@reports_api_requests
def run_ingress_block(task: Task[BlockOptions]) -> Result:
    """``ingress_block``: rank, block or release."""
    client = task.client(K8sClient.from_params)
    opts = task.options
    if opts.state == "released":
        return _release(task, client)
    logs = read_logs(client, opts) if opts.log_sources else LogRead([], [], collections.Counter())
    ranking = rank(logs.counts, opts.exclude, opts.min_failures, opts.top)
    ranked = [{"address": str(a), "failures": n} for a, n in ranking.offenders]
    base: Result = {"ranked": ranked, "blocked": [], "ingresses": [], "logs": logs.entries}
    if opts.log_sources and not any(entry["error"] is None for entry in logs.entries):
        raise RunbookError("no log of the log_sources could be read, so no address was ranked and nothing was "
                           "changed: %s" % "; ".join(f["message"] for f in logs.findings[:5]),
                           **_judged(base, logs.findings))
    if opts.state == "ranked":
        findings = logs.findings + _ranking_findings(ranking, False, opts.min_failures)
        return dict(_judged(base, findings), changed=False, msg="%d address(es) ranked from %d log(s) in %s"
                    % (len(ranked), len(logs.entries), _sources_text(opts)))
    return _block(task, client, ranking, base, logs.findings)


def _sources_text(opts: BlockOptions) -> str:
    return "; ".join(source.describe() for source in opts.log_sources) or "no log source"


def _judged(result: Result, findings: t.List[Finding]) -> Result:
    """``result`` with ``status``, ``summary`` and sorted ``findings``; the caller writes ``msg`` and ``changed``."""
    return judged("ingress_block", findings, "never", **result)


def _block(task: Task[BlockOptions], client: K8sClient, ranking: Ranking, base: Result,
           findings: t.List[Finding]) -> Result:
    opts = task.options
    objects = target_ingresses(client, opts, releasing=False)
    addresses = [address for address, _failures in ranking.offenders]
    limits = {LIMIT_RPS: str(opts.rate_limit_rps)}
    if opts.rate_limit_connections is not None:
        limits[LIMIT_CONNECTIONS] = str(opts.rate_limit_connections)
    now = isoformat(utcnow())
    outcomes: t.List[Outcome] = []
    denylist = opts.method == "denylist"
    findings = findings + _ranking_findings(ranking, denylist, opts.min_failures) + _class_findings(objects, opts.namespace)
    for obj in objects:
        where = object_ref("Ingress", obj["metadata"]["name"], opts.namespace)
        try:
            outcomes.append(change_ingress(task, client, obj, functools.partial(
                apply_block, incident_id=opts.incident_id, method=opts.method, addresses=addresses, limits=limits,
                now=now, where=where)))
        except RunbookError as exc:
            raise RunbookError("blocking failed at %s: %s; the Ingresses listed in the result were changed and carry "
                               "the record, run state=released to undo" % (where, exc.msg),
                               **_finish(task, base, outcomes, findings))
    result = _finish(task, base, outcomes, findings)
    result["blocked"] = [host_cidr(a) for a in addresses] if denylist else []
    added = sorted({cidr for entry in result["ingresses"] for cidr in entry["added"]})
    verb = "would block" if task.check_mode else "blocked"
    if denylist:
        what = ("%s %d address(es) on %d Ingress(es) in namespace %s for incident %s (%d new denylist entr(ies))"
                % (verb, len(addresses), len(objects), opts.namespace, opts.incident_id, len(added)))
        if not addresses:
            what = "no address reached min_failures (%d); nothing blocked in namespace %s" % (
                opts.min_failures, opts.namespace)
    else:
        what = ("%s %d Ingress(es) in namespace %s to %d request(s)/s per client address for incident %s"
                % ("would rate-limit" if task.check_mode else "rate-limited", len(objects), opts.namespace,
                   opts.rate_limit_rps, opts.incident_id))
    result["msg"] = what + ("" if result["changed"] else "; nothing changed")
    return result


def _finish(task: Task[BlockOptions], base: Result, outcomes: t.Sequence[Outcome], findings: t.List[Finding]) -> Result:
    """The result of the Ingresses handled so far, with the diff of their managed annotations."""
    ns, incident_id = task.options.namespace, task.options.incident_id
    result = _judged(dict(base, ingresses=[o.entry for o in outcomes]), findings)
    result["changed"] = any(o.entry["changed"] for o in outcomes)
    result["diff"] = {
        "before": {object_ref("Ingress", o.entry["name"], ns): _managed(o.before, incident_id) for o in outcomes
                   if o.entry["changed"]},
        "after": {object_ref("Ingress", o.entry["name"], ns): _managed(o.after, incident_id) for o in outcomes
                  if o.entry["changed"]}}
    return result


def _release(task: Task[BlockOptions], client: K8sClient) -> Result:
    opts = task.options
    objects = target_ingresses(client, opts, releasing=True)
    base: Result = {"ranked": [], "blocked": [], "ingresses": [], "logs": []}
    outcomes: t.List[Outcome] = []
    for obj in objects:
        if record_key(opts.incident_id) not in _annotations(obj):
            continue
        where = object_ref("Ingress", obj["metadata"]["name"], opts.namespace)
        try:
            outcomes.append(change_ingress(task, client, obj, functools.partial(
                release_block, incident_id=opts.incident_id, where=where)))
        except RunbookError as exc:
            raise RunbookError("release failed at %s: %s; the Ingresses not released keep their record, run "
                               "state=released again once the cause is fixed" % (where, exc.msg),
                               **_finish(task, base, outcomes, []))
    findings = [finding("ok", "ingresses", object_ref("Ingress", o.entry["name"], opts.namespace),
                        "block of incident %s released" % opts.incident_id) for o in outcomes]
    result = _finish(task, base, outcomes, findings)
    if not outcomes:
        result["msg"] = "incident %s blocks nothing in namespace %s; nothing to release" % (
            opts.incident_id, opts.namespace)
        return result
    removed = sum(len(o.entry["removed"]) for o in outcomes)
    result["msg"] = "%s the block of incident %s on %d Ingress(es) in namespace %s (%d denylist entr(ies) removed)" % (
        "would release" if task.check_mode else "released", opts.incident_id, len(outcomes), opts.namespace, removed)
    return result
