# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rotating JWT signing keys kept in a Kubernetes Secret: the flow behind ``runbook.ops.jwt_rotate``.

1. Options are read and checked (:class:`RotateOptions`) before the API is asked anything.
2. The workloads to restart are checked to exist.
3. The Secret is read, the key set planned (:func:`._jwks.plan`) and written back with the
   resourceVersion it was read with; on a conflict it is read and planned again, so two runs started
   together make one rotation.
4. The copies are written (the public set, the active key alone), then the workloads restarted and,
   with ``wait``, waited for (:mod:`._rollout`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, parse_time, utcnow,
)
from ansible_collections.runbook.ops.plugins.module_utils._credentials import secret_consumers
from ansible_collections.runbook.ops.plugins.module_utils._findings import Finding, finding, summarize
from ansible_collections.runbook.ops.plugins.module_utils._jwk import (
    HMAC_ALGORITHMS, MAX_RSA_BITS, export_active,
)
from ansible_collections.runbook.ops.plugins.module_utils._jwks import KeySet, Plan, Policy, plan
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sConflict, K8sError, K8sForbidden, K8sObject,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    duration, k8s_data_key, k8s_name, no_control, number, shown,
)
from ansible_collections.runbook.ops.plugins.module_utils._rollout import WORKLOAD_KINDS, Workload, Started, wait_rollouts

MANAGED_LABELS = {"app.kubernetes.io/managed-by": "runbook.ops"}
MAX_DURATION = 100 * 365 * 86400.0
MAX_WAIT = 86400
ATTEMPTS = 5


# ----------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a copy goes: one key of a ConfigMap or Secret (the public set, or the active key)."""

    kind: str
    name: str
    namespace: str
    key: str

    @property
    def plural(self) -> str:
        return "configmaps" if self.kind == "ConfigMap" else "secrets"

    def current(self, obj: t.Optional[K8sObject]) -> t.Optional[bytes]:
        if obj is None:
            return None
        if self.kind == "ConfigMap":
            value = (obj.get("data") or {}).get(self.key)
            return None if value is None else str(value).encode("utf-8")
        return _secret_text(obj, self.key)

    def put(self, obj: K8sObject, content: bytes) -> None:
        if obj.get("data") is None:
            obj["data"] = {}
        obj["data"][self.key] = content.decode("utf-8") if self.kind == "ConfigMap" else _b64(content)


@dataclasses.dataclass(frozen=True)
class RotateOptions:
    namespace: str
    secret_name: str
    secret_key: str
    policy: Policy  # algorithm, key_size, rotate_after, grace_period, prepublish, force, revoke
    now: datetime.datetime
    public_jwks: t.Optional[Target]
    active_key_secret: t.Optional[Target]
    active_format: str  # "" without active_key_secret
    restart: t.Tuple[Workload, ...]
    wait: bool
    wait_timeout: int

    @property
    def ref(self) -> str:
        return "Secret/%s/%s" % (self.namespace, self.secret_name)

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RotateOptions":
        """Every name, number and duration checked, then the policy and the targets."""
        _check_values(params)
        policy = Policy(
            algorithm=params["algorithm"], key_size=params["key_size"],
            rotate_after=duration("rotate_after", params["rotate_after"], 0.0, MAX_DURATION, above=True),
            grace_period=duration("grace_period", params["grace_period"], 0.0, MAX_DURATION),
            prepublish=duration("prepublish", params["prepublish"], 0.0, MAX_DURATION),
            force=params["force"], revoke=params["revoke"])
        now = parse_time(params["now"], "now")
        if not 1970 <= now.year <= 9000:
            raise RunbookError("now %s is out of range: give a time between the years 1970 and 9000" % shown(params["now"]))
        public, active, fmt = _targets(params)
        _check_combination(policy, public, fmt)
        restart = tuple(Workload(item["kind"], item["name"], item["namespace"] or params["namespace"])
                        for item in params["restart"])
        return options_from(cls, params, policy=policy, now=now, public_jwks=public, active_key_secret=active,
                            active_format=fmt, restart=restart)


def _check_values(params: t.Mapping[str, t.Any]) -> None:
    """Every name and number a user (or a survey) can set, checked before the API is asked."""
    k8s_name("namespace", params["namespace"], label=True)
    k8s_name("secret_name", params["secret_name"])
    k8s_data_key("secret_key", params["secret_key"])
    number("key_size", params["key_size"], 1, MAX_RSA_BITS * 8)
    for option in ("public_jwks", "active_key_secret"):
        target = params[option]
        if target:
            k8s_name("%s.name" % option, target["name"])
            if target["namespace"]:
                k8s_name("%s.namespace" % option, target["namespace"], label=True)
            k8s_data_key("%s.key" % option, target["key"])
    for index, item in enumerate(params["restart"]):
        k8s_name("restart[%d].name" % index, item["name"])
        if item["namespace"]:
            k8s_name("restart[%d].namespace" % index, item["namespace"], label=True)
    for index, kid in enumerate(params["revoke"]):
        no_control("revoke[%d]" % index, kid)
        if len(str(kid)) > 512:
            raise RunbookError("revoke[%d] %s is longer than 512 characters; it is no kid of this set" % (index, shown(kid)))
    number("wait_timeout", params["wait_timeout"], 1, MAX_WAIT)
    if params["now"]:
        no_control("now", params["now"])


def _targets(params: t.Mapping[str, t.Any]) -> t.Tuple[t.Optional[Target], t.Optional[Target], str]:
    ns = params["namespace"]
    pub_opt, act_opt = params["public_jwks"], params["active_key_secret"]
    public = Target(pub_opt["kind"], pub_opt["name"], pub_opt["namespace"] or ns, pub_opt["key"]) if pub_opt else None
    active = None
    fmt = ""
    if act_opt:
        active = Target("Secret", act_opt["name"], act_opt["namespace"] or ns, act_opt["key"])
        # The format's default depends on the algorithm, so it is decided here, not in the spec.
        fmt = act_opt["format"] or ("raw" if params["algorithm"] in HMAC_ALGORITHMS else "pem")
        if active.name == params["secret_name"] and active.namespace == ns and active.key == params["secret_key"]:
            raise RunbookError("active_key_secret: key %s of Secret/%s/%s is where the key set itself is kept; "
                               "choose another key" % (active.key, ns, active.name))
    if public is not None and public.kind == "Secret" and public.name == params["secret_name"] \
            and public.namespace == ns and public.key == params["secret_key"]:
        raise RunbookError("public_jwks: key %s of Secret/%s/%s is where the private key set is kept; choose another key"
                           % (public.key, ns, public.name))
    return public, active, fmt


def _check_combination(policy: Policy, public: t.Optional[Target], fmt: str) -> None:
    if public is not None and policy.algorithm in HMAC_ALGORITHMS:
        raise RunbookError("public_jwks cannot be used with %s: an HMAC key is a shared secret, publishing it would "
                           "let anyone sign tokens; share it through active_key_secret (or the Secret) instead"
                           % policy.algorithm)
    if fmt == "raw" and policy.algorithm not in HMAC_ALGORITHMS:
        raise RunbookError("active_key_secret: format raw is only for HS256/HS512 keys; use pem or jwk for %s"
                           % policy.algorithm)
    if fmt == "pem" and policy.algorithm in HMAC_ALGORITHMS:
        raise RunbookError("active_key_secret: format pem is only for asymmetric keys; use raw or jwk for %s"
                           % policy.algorithm)


# ----------------------------------------------------------------------------------------------
# Kubernetes reads and writes


def _secret_text(obj: t.Optional[K8sObject], key: str) -> t.Optional[bytes]:
    if obj is None:
        return None
    value = (obj.get("data") or {}).get(key)
    if value is None:
        return None
    return base64.b64decode(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _forbidden_hint(exc: K8sError, need: str) -> RunbookError:
    if isinstance(exc, K8sForbidden):
        return RunbookError("%s (jwt_rotate needs %s)" % (exc.msg, need), **exc.details)
    return exc


def write_key(client: K8sClient, target: Target, content: bytes, check_mode: bool, attempts: int = ATTEMPTS) -> bool:
    """Set one key of a ConfigMap or Secret (created when absent), other keys untouched; optimistic
    concurrency through resourceVersion. Returns whether anything changed."""
    for attempt in range(1, attempts + 1):
        obj = client.get("v1", target.plural, target.name, target.namespace, missing_ok=True)
        if target.current(obj) == content:
            return False
        if check_mode:
            return True
        try:
            if obj is None:
                body: K8sObject = {"metadata": {"name": target.name, "namespace": target.namespace,
                                                "labels": dict(MANAGED_LABELS)}}
                if target.kind == "Secret":
                    body["type"] = "Opaque"
                target.put(body, content)
                client.create("v1", target.plural, body, target.namespace)
            else:
                target.put(obj, content)
                client.replace("v1", target.plural, obj, target.namespace)
            return True
        except K8sConflict:
            if attempt == attempts:
                raise
            time.sleep(0.1 * attempt)
    return False  # not reached


@dataclasses.dataclass
class Outcome:
    """The key set as planned and written, and whether another run changed it meanwhile."""

    plan: Plan
    concurrent: bool


def _effective_policy(opts: RotateOptions, current: KeySet, first_active: t.Optional[str],
                      first_kids: t.List[str]) -> t.Tuple[Policy, bool]:
    """The policy for a set read again after a conflict, and whether another run rotated meanwhile."""
    policy, concurrent = opts.policy, False
    active = current.active
    if (active.kid if active else None) != first_active:
        # Someone else rotated in between: that rotation is the one asked for; a revoke of "all"
        # means the keys that existed when this run started, not the one just made.
        concurrent = True
        policy = dataclasses.replace(policy, force=False, revoke=list(first_kids) if policy.revoke_all else policy.revoke)
    if policy.revoke:
        # The kids to revoke were checked against the set as first read; one that went away since
        # (another run revoked or dropped it) is simply gone.
        policy = dataclasses.replace(policy, revoke=[kid for kid in policy.revoke if kid in current.kids()])
    return policy, concurrent


def _plan(opts: RotateOptions, current: KeySet, policy: Policy) -> Plan:
    where = "key %s of %s" % (opts.secret_key, opts.ref)
    try:
        return plan(current, policy, opts.now, where=where)
    except OverflowError:
        raise RunbookError("%s holds a date that, with rotate_after, grace_period or prepublish, is out of the range "
                           "of dates (past the year 9999); fix the stored dates or the durations" % where)


def update_key_set(client: K8sClient, opts: RotateOptions, check_mode: bool) -> Outcome:
    """Read, plan and write the key set with the read resourceVersion; on a conflict read and plan again."""
    need = "get, create and update on secrets in namespace %s" % opts.namespace
    first_active: t.Optional[str] = None
    first_kids: t.Optional[t.List[str]] = None
    concurrent = False
    for attempt in range(1, ATTEMPTS + 1):
        try:
            obj = client.get("v1", "secrets", opts.secret_name, opts.namespace, missing_ok=True)
        except K8sError as exc:
            raise _forbidden_hint(exc, need)
        current = KeySet.parse(_secret_text(obj, opts.secret_key), opts.now, opts.policy.grace_period,
                               where="key %s of %s" % (opts.secret_key, opts.ref))
        policy = opts.policy
        if first_kids is None:
            first_active, first_kids = (current.active.kid if current.active else None), current.kids()
        else:
            policy, rotated_meanwhile = _effective_policy(opts, current, first_active, first_kids)
            concurrent = concurrent or rotated_meanwhile
        planned = _plan(opts, current, policy)
        if not planned.changed or check_mode:
            return Outcome(planned, concurrent)
        data = _b64(planned.after.dump().encode("utf-8"))
        try:
            if obj is None:
                client.create("v1", "secrets", {
                    "metadata": {"name": opts.secret_name, "namespace": opts.namespace, "labels": dict(MANAGED_LABELS)},
                    "type": "Opaque", "data": {opts.secret_key: data}}, opts.namespace)
            else:
                if obj.get("data") is None:
                    obj["data"] = {}
                obj["data"][opts.secret_key] = data
                client.replace("v1", "secrets", obj, opts.namespace)
            return Outcome(planned, concurrent)
        except K8sConflict:
            concurrent = True
            if attempt == ATTEMPTS:
                raise RunbookError("cannot update %s: it kept changing under this run (%d attempts); "
                                   "another rotation is running" % (opts.ref, ATTEMPTS))
            time.sleep(0.05 * attempt)
        except K8sError as exc:
            raise _forbidden_hint(exc, need)
    raise AssertionError("not reached: every attempt returns or raises")


# ----------------------------------------------------------------------------------------------
# Copies and restarts


def publish(client: K8sClient, target: Target, keyset: KeySet, check_mode: bool) -> t.Dict[str, t.Any]:
    """Write the public JWK Set; what was published (public keys only)."""
    document = keyset.public()
    content = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8")
    try:
        changed = write_key(client, target, content, check_mode)
    except K8sError as exc:
        raise _forbidden_hint(exc, "get, create and update on %ss in namespace %s" % (target.kind.lower(), target.namespace))
    return {"kind": target.kind, "name": target.name, "namespace": target.namespace, "key": target.key,
            "changed": changed, "kids": [k["kid"] for k in document["keys"]], "jwks": document}


def write_active(client: K8sClient, target: Target, keyset: KeySet, fmt: str, check_mode: bool) -> t.Dict[str, t.Any]:
    """Write the active key alone, in ``fmt``; where it went and its kid (never the key)."""
    active = keyset.active
    if active is None:
        raise AssertionError("a planned key set always has an active key")
    if fmt == "raw" and not active.is_hmac or fmt == "pem" and active.is_hmac:
        raise RunbookError("active_key_secret: format %s does not fit the active key %s (%s)" % (fmt, active.kid, active.alg))
    try:
        changed = write_key(client, target, export_active(active.jwk, fmt), check_mode)
    except K8sError as exc:
        raise _forbidden_hint(exc, "get, create and update on secrets in namespace %s" % target.namespace)
    return {"name": target.name, "namespace": target.namespace, "key": target.key, "format": fmt, "kid": active.kid,
            "changed": changed}


def check_workloads(client: K8sClient, workloads: t.Sequence[Workload]) -> None:
    """Every workload to restart exists (K8sNotFound names the one that does not)."""
    for item in workloads:
        try:
            client.get("apps/v1", WORKLOAD_KINDS[item.kind], item.name, item.namespace)
        except K8sError as exc:
            raise _forbidden_hint(exc, "get on the workloads it restarts")


def restart(client: K8sClient, opts: RotateOptions, check_mode: bool) -> t.Tuple[t.List[str], t.Optional[str]]:
    """Restart the workloads (as ``kubectl rollout restart``); with ``wait``, why the rollouts did not
    finish in time (None when they did)."""
    stamp = isoformat(utcnow())
    started: t.List[Started] = []
    for item in opts.restart:
        if check_mode:
            continue
        try:
            obj = client.rollout_restart("apps/v1", WORKLOAD_KINDS[item.kind], item.name, item.namespace, at=stamp)
        except K8sError as exc:
            raise _forbidden_hint(exc, "patch on %ss in namespace %s" % (item.kind.lower(), item.namespace))
        started.append((item.kind, item.name, item.namespace, int(obj["metadata"].get("generation", 0))))
    failure = wait_rollouts(client, started, opts.wait_timeout) if opts.wait and started else None
    return [item.ref for item in opts.restart], failure


# ----------------------------------------------------------------------------------------------
# The run


def rotate(task: Task[RotateOptions]) -> Result:
    """Apply the rotation policy to ``Secret/<namespace>/<secret_name>`` and its copies."""
    client: t.Optional[K8sClient] = None
    try:
        client = task.client(K8sClient.from_params)
        result, failure = _rotate(task, client)
    except RunbookError as exc:
        exc.details.setdefault("api_requests", client.requests if client is not None else 0)
        raise
    result["api_requests"] = client.requests
    if failure:
        # The keys stay rotated and every result is returned; the rollout's failure replaces the message.
        raise RunbookError.keeping(failure, result)
    return result


def _rotate(task: Task[RotateOptions], client: K8sClient) -> t.Tuple[Result, t.Optional[str]]:
    opts, check_mode = task.options, task.check_mode
    check_workloads(client, opts.restart)
    outcome = update_key_set(client, opts, check_mode)
    planned, keyset = outcome.plan, outcome.plan.after
    changed = planned.changed
    public = publish(client, opts.public_jwks, keyset, check_mode) if opts.public_jwks is not None else None
    active = (write_active(client, opts.active_key_secret, keyset, opts.active_format, check_mode)
              if opts.active_key_secret is not None else None)
    changed = changed or bool(public and public["changed"]) or bool(active and active["changed"])
    restarted: t.List[str] = []
    failure = None
    if changed:
        opts = _with_consumers(task, client, opts)
    if changed and opts.restart:
        restarted, failure = restart(client, opts, check_mode)
    if planned.pending:
        task.warn("rotation is due but the next key %s was published less than prepublish ago; it is activated by a "
                  "run after %s" % (keyset.next.kid if keyset.next else "?", _when(planned.next_rotation) or "?"))
    result: Result = {
        "changed": changed,
        "msg": ("(check mode) " if check_mode and changed else "") + _message(opts, outcome),
        "rotated": planned.rotated and planned.changed,
        "active_kid": planned.active_kid,
        "keys": keyset.facts(),
        "revoked": list(planned.revoked),
        "dropped": list(planned.dropped),
        "public_jwks": public,
        "active_key_secret": active,
        "restarted": restarted,
        "secret": opts.ref,
        "next_rotation": _when(planned.next_rotation),
        "concurrent_change": outcome.concurrent,
    }
    result["findings"] = [_rotation_finding(opts, planned, check_mode, result["msg"])]
    result["status"], result["summary"] = summarize(result["findings"])
    if task.diff:
        result["diff"] = {"before_header": opts.ref, "after_header": opts.ref,
                          "before": _diff_view(planned.before.sorted()), "after": _diff_view(keyset)}
    return result, failure


def _rotation_finding(opts: RotateOptions, planned: Plan, check_mode: bool, msg: str) -> Finding:
    """Whether a rotation was due when the task started, as a finding: a check-mode run (the daily check)
    reports a due rotation as a warning with the age of the key that signs today."""
    active = [key for key in planned.before.facts() if key["state"] == "active"]
    since = active[0]["activated"] if active else None
    due = planned.rotated and planned.changed
    if due and check_mode:
        severity, state = "warning", "rotation due"
    elif due:
        severity, state = "ok", "rotated"
    else:
        severity, state = "ok", "not due"
    message = "%s: %s" % (state, msg)
    if since:
        message += "; the signing key had been active since %s" % since
    elif due:
        message += "; no key of this key set had been activated before (a secret set by hand has no recorded age)"
    return finding(severity, "signing_key_rotation", opts.ref, message,
                   {"rotate_after_s": opts.policy.rotate_after, "active_since": since,
                    "next_rotation": _when(planned.next_rotation)})


def _with_consumers(task: Task[RotateOptions], client: K8sClient, opts: RotateOptions) -> RotateOptions:
    """``opts`` with the workloads that use the written Secrets added after the listed ones (the
    discovery of the credential rotation modules); without the right to list them, a warning."""
    secrets = [(opts.namespace, opts.secret_name)]
    if opts.active_key_secret is not None:
        secrets.append((opts.active_key_secret.namespace, opts.active_key_secret.name))
    workloads = list(opts.restart)
    for ns, name in secrets:
        try:
            found, _cronjobs = secret_consumers(client, ns, name)
        except RunbookError as exc:
            task.warn("workloads using Secret/%s/%s were not looked for: %s" % (ns, name, exc.msg))
            continue
        workloads.extend(item for item in (Workload(w.kind, w.name, w.namespace) for w in found) if item not in workloads)
    return dataclasses.replace(opts, restart=tuple(workloads))


def _when(moment: t.Optional[datetime.datetime]) -> t.Optional[str]:
    return isoformat(moment) if moment else None


def _message(opts: RotateOptions, outcome: Outcome) -> str:
    planned = outcome.plan
    if outcome.concurrent and not planned.changed:
        events = ["another run changed %s at the same time; found active key %s" % (opts.ref, planned.active_kid)]
    else:
        events = list(planned.events)
    msg = "; ".join(events) if events else "key set %s unchanged: active key %s, next rotation %s" % (
        opts.ref, planned.active_kid, _when(planned.next_rotation) or "-")
    if planned.notes:
        msg += "; " + "; ".join(planned.notes)
    return msg


def _diff_view(keyset: KeySet) -> str:
    """Kids, states and algorithms, one key a line: never key material."""
    lines = []
    for fact in keyset.facts():
        line = "%s %s %s" % (fact["state"], fact["kid"], fact["alg"])
        if fact["retire_at"]:
            line += " retire_at=%s" % fact["retire_at"]
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")
