# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Certificates near expiry, found and renewed: the flow behind ``runbook.ops.cert_renew``.

1. Options are read and checked (:class:`CertRenewOptions`) before anything runs.
2. The issuer is loaded and checked (:mod:`._cert_issuer`): a bad issuer refuses the run before any
   source is read.
3. Every source (:mod:`._cert_sources`) reads its certificates; each is judged here (:func:`judge`:
   days left and the fraction of its lifetime left, against ``now``) and, when due, renewed by its
   source.
4. With ``wait``, the Certificates given to cert-manager are waited for; then the Deployments and
   StatefulSets that use a renewed Secret are listed (and restarted with ``restart_consumers``).

A renewal that fails does not stop the others: the task fails at the end, returning every result.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._cert_issuer import IssuerOptions, Issuer, KeyPolicy
from ansible_collections.runbook.ops.plugins.module_utils._cert_sources import (
    SOURCES, Current, Entry, Ledger, SourceContext, SourceOptions, wait_for_reissue,
)
from ansible_collections.runbook.ops.plugins.module_utils._cert_x509 import require_cryptography
from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, parse_time, utcnow,
)
from ansible_collections.runbook.ops.plugins.module_utils._findings import Finding, finding, sort_findings, summarize
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sForbidden, K8sNotFound, object_ref,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import no_control, number

MAX_DAYS = 36500
MAX_WAIT = 86400
MAX_CONNECT_TIMEOUT = 3600
WORKLOADS = (("apps/v1", "deployments", "Deployment"), ("apps/v1", "statefulsets", "StatefulSet"))


@dataclasses.dataclass(frozen=True)
class CertRenewOptions:
    sources: t.Tuple[SourceOptions, ...]
    remaining_days: float
    remaining_percentage: t.Optional[float]
    force: bool
    now: datetime.datetime
    issuer: t.Optional[IssuerOptions]
    key_policy: KeyPolicy  # key_type, reuse_key, validity_days
    wait: bool
    wait_timeout: int
    restart_consumers: bool
    connect_timeout: float

    @property
    def needs_kubernetes(self) -> bool:
        return any(source.needs_kubernetes for source in self.sources)

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "CertRenewOptions":
        """Ranges the argument spec cannot express, then every source's values."""
        if params["now"]:
            no_control("now", params["now"])
        now = parse_time(params["now"], "now")
        remaining_days = number("remaining_days", params["remaining_days"], 0, MAX_DAYS)
        pct = params["remaining_percentage"]
        if pct is not None and not 0 < number("remaining_percentage", pct) < 1:
            raise RunbookError("remaining_percentage must be a fraction of the lifetime between 0 and 1 "
                               "(for example 0.33), not %s" % pct)
        number("validity_days", params["validity_days"], 1, MAX_DAYS)
        for option, high in (("wait_timeout", MAX_WAIT), ("connect_timeout", MAX_CONNECT_TIMEOUT)):
            number(option, params[option], 0, high, above=True)
        sources = tuple(options_from(SourceOptions, src, where="sources[%d]" % index)
                        for index, src in enumerate(params["sources"]))
        if not sources:
            raise RunbookError("sources is empty: give at least one tls_secret, certificate, endpoint or file source")
        for source in sources:
            source.check()
        issuer = options_from(IssuerOptions, params["issuer"]) if params["issuer"] else None
        return options_from(cls, params, sources=sources, now=now, remaining_days=remaining_days,
                            remaining_percentage=None if pct is None else float(pct), issuer=issuer,
                            key_policy=options_from(KeyPolicy, params))


# ----------------------------------------------------------------------------------------------
# Judging (pure)


def judge(not_before_: datetime.datetime, not_after_: datetime.datetime, now: datetime.datetime,
          remaining_days: float, remaining_percentage: t.Optional[float], force: bool = False) -> t.Dict[str, t.Any]:
    """``days_left``, ``should_renew``, the severity and a human ``msg`` such as
    ``expires in 12 days, below 30``."""
    left = not_after_ - now
    days_left = round(left.total_seconds() / 86400.0, 2)
    lifetime = (not_after_ - not_before_).total_seconds()
    fraction = left.total_seconds() / lifetime if lifetime > 0 else 0.0
    whole = int(abs(days_left))
    unit = "day" if whole == 1 else "days"
    reasons: t.List[str] = []
    if left.total_seconds() <= 0:
        msg = "expired %d %s ago" % (whole, unit) if whole else "expired today"
        severity = "critical"
        reasons.append("expired")
    else:
        msg = "expires in %d %s" % (whole, unit) if whole else "expires within a day"
        severity = "ok"
        if days_left < remaining_days:
            reasons.append("below %s" % _number(remaining_days))
        if remaining_percentage is not None and fraction < remaining_percentage:
            reasons.append("%d%% of its lifetime left, below %s%%"
                           % (int(fraction * 100), _number(remaining_percentage * 100)))
        if reasons:
            severity = "warning"
    if now < not_before_:
        msg += ", not valid before %s" % isoformat(not_before_)
        severity = "critical"
    if reasons and reasons != ["expired"]:
        msg += ", " + " and ".join(reasons)
    elif not reasons:
        msg += ", more than %s days left" % _number(remaining_days)
    should = bool(reasons) or force
    if force and not reasons:
        msg += ", renewal forced"
    return {"days_left": days_left, "should_renew": should, "severity": severity, "msg": msg,
            "lifetime_left": round(fraction, 4)}


def _number(value: float) -> str:
    return ("%d" % value) if float(value).is_integer() else ("%g" % value)


def decide(current: Current, opts: CertRenewOptions) -> None:
    """Judge one certificate as read and record the verdict on its entry."""
    entry = current.entry
    if current.validity is None:
        entry.msg, entry.severity, entry.should_renew = current.unjudged, "critical", opts.force
    else:
        start, end = current.validity
        verdict = judge(start, end, opts.now, remaining_days=opts.remaining_days,
                        remaining_percentage=opts.remaining_percentage, force=opts.force)
        entry.days_left = verdict["days_left"]
        entry.should_renew = verdict["should_renew"]
        entry.severity = verdict["severity"]
        entry.msg = verdict["msg"]
        entry.details["lifetime_left"] = verdict["lifetime_left"]
    for problem in current.problems:
        entry.severity = "critical"
        entry.msg += "; " + problem


# ----------------------------------------------------------------------------------------------
# Consumers


def referenced_secrets(pod_spec: t.Mapping[str, t.Any]) -> t.Set[str]:
    """Secrets a pod template mounts (volumes, projected volumes) or references (env, envFrom)."""
    names: t.Set[str] = set()
    for volume in pod_spec.get("volumes") or []:
        secret = volume.get("secret") or {}
        if secret.get("secretName"):
            names.add(secret["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if (source.get("secret") or {}).get("name"):
                names.add(source["secret"]["name"])
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for container in pod_spec.get(key) or []:
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
                if ref.get("name"):
                    names.add(ref["name"])
            for env_from in container.get("envFrom") or []:
                ref = env_from.get("secretRef") or {}
                if ref.get("name"):
                    names.add(ref["name"])
    return names


def consumers_of(client: K8sClient, renewed: t.Mapping[str, t.Set[str]], *, restart: bool,
                 check_mode: bool) -> t.Tuple[t.List[t.Dict[str, t.Any]], t.List[Finding]]:
    """The Deployments and StatefulSets using a renewed Secret (restarted with ``restart``), and a
    finding for each namespace where they could not be listed."""
    consumers: t.List[t.Dict[str, t.Any]] = []
    problems: t.List[Finding] = []
    stamp = isoformat(utcnow())
    for ns, secrets in sorted(renewed.items()):
        for api_version, plural, kind in WORKLOADS:
            try:
                workloads = client.list(api_version, plural, ns)
            except (K8sForbidden, K8sNotFound) as exc:
                problems.append(finding(
                    "unknown", "consumers", object_ref(kind, "*", ns),
                    "cannot list %s in namespace %s to find consumers of %s: %s"
                    % (plural, ns, ", ".join(sorted(secrets)), exc.msg), {"status": exc.status}))
                continue
            for workload in workloads:
                pod_spec = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
                used = sorted(referenced_secrets(pod_spec) & secrets)
                if not used:
                    continue
                name = workload["metadata"]["name"]
                if restart and not check_mode:
                    client.rollout_restart(api_version, plural, name, ns, at=stamp)
                consumers.append({"kind": kind, "namespace": ns, "name": name, "secrets": used, "restarted": restart})
    return consumers, problems


# ----------------------------------------------------------------------------------------------
# The run


def run_cert_renew(task: Task[CertRenewOptions]) -> Result:
    require_cryptography()
    opts = task.options
    ctx = SourceContext(ledger=Ledger(), check_mode=task.check_mode, issuer=None, key_policy=opts.key_policy,
                        connect_timeout=opts.connect_timeout, wait=opts.wait,
                        open_client=lambda: task.client(K8sClient.from_params))
    try:
        # The issuer is loaded and checked first: a bad issuer refuses the run before anything is read or written.
        ctx.issuer = Issuer.from_options(opts.issuer) if opts.issuer is not None else None
        result = _renew_all(task, ctx)
    except RunbookError as exc:
        exc.details.setdefault("api_requests", ctx.opened.requests if ctx.opened is not None else 0)
        raise
    if ctx.ledger.failures:
        # Every result is returned; the failed renewals' messages replace the summary.
        raise RunbookError.keeping("; ".join(ctx.ledger.failures), result)
    return result


def _renew_all(task: Task[CertRenewOptions], ctx: SourceContext) -> Result:
    opts, ledger = task.options, ctx.ledger
    for source_options in opts.sources:
        source = SOURCES[source_options.type](source_options, ctx)
        for current in source.read():
            ledger.entries.append(current.entry)
            decide(current, opts)
            if current.entry.should_renew:
                source.renew(current)
    if ledger.pending:
        wait_for_reissue(ctx, opts.wait_timeout)
    consumers: t.List[t.Dict[str, t.Any]] = []
    if ledger.renewed_secrets:
        consumers, problems = consumers_of(ctx.client(), ledger.renewed_secrets, restart=opts.restart_consumers,
                                           check_mode=task.check_mode)
        ledger.extra_findings.extend(problems)
    findings = sort_findings([e.finding() for e in ledger.entries] + ledger.extra_findings)
    status, summary = summarize(findings)
    renewed = sum(1 for e in ledger.entries if e.renewed)
    restarted = sum(1 for c in consumers if c["restarted"])
    result: Result = {
        "changed": bool(renewed or restarted),
        "msg": _message(ledger.entries, renewed, restarted, task.check_mode, status),
        "certificates": [e.result() for e in ledger.entries],
        "renewed": renewed,
        "consumers": consumers,
        "findings": findings,
        "status": status,
        "summary": summary,
        "checked_at": isoformat(opts.now),
        "api_requests": ctx.opened.requests if ctx.opened is not None else 0,
    }
    if task.diff and ledger.diffs:
        result["diff"] = {"before": {d["object"]: d["before"] for d in ledger.diffs},
                          "after": {d["object"]: d["after"] for d in ledger.diffs}}
    return result


def _message(entries: t.Sequence[Entry], renewed: int, restarted: int, check_mode: bool, status: str) -> str:
    """One sentence for people: ``3 certificates checked, 1 due for renewal, 1 renewed; status info``."""
    count = len(entries)
    parts = ["%d certificate%s checked" % (count, "" if count == 1 else "s"),
             "%d due for renewal" % sum(1 for e in entries if e.should_renew),
             "%d %s" % (renewed, "would be renewed" if check_mode else "renewed")]
    if restarted:
        parts.append("%d consumer%s %s" % (restarted, "" if restarted == 1 else "s",
                                           "would be restarted" if check_mode else "restarted"))
    return "%s; status %s" % (", ".join(parts), status)
