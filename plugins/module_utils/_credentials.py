# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rotating a database credential kept in a Kubernetes Secret, whatever the database: the flow behind
``runbook.ops.pg_credential_rotate`` and ``runbook.ops.redis_credential_rotate``.

1. The consumers are found: Deployments, StatefulSets and DaemonSets of the Secret's namespace whose
   pod template references the Secret (env, envFrom, volumes, projected volumes), after the ones
   listed explicitly; CronJobs are reported only.
2. A rotation holds the Secret's *rotation record*, a companion Secret ``<name>-rotation``: created
   before the database is touched, it holds the new credential (so a run that died after changing
   the database is repaired by the next one: the new password is recovered, never lost), the previous
   one (to revoke it later) and who holds it until when. Two runs started together: one creates the
   record, the other waits for it to be released and finds the rotation done.
3. The database accepts the new credential (:class:`Service`), the Secret is written with the
   resourceVersion it was read with, the consumers are restarted one by one, each waited for.
4. Only when every consumer is Ready (and ``grace_period`` has passed) is the previous credential
   revoked; then the record is deleted. A consumer that fails leaves the previous credential valid,
   the record in place, and the task failed naming the workload; the next run resumes there.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import os
import secrets
import socket
import string
import time
import typing as t
import urllib.parse
import uuid

from ansible_collections.runbook.ops.plugins.module_utils._cert_renew import referenced_secrets
from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, parse_time, utcnow,
)
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sConflict, K8sError, K8sForbidden, K8sNotFound, K8sObject,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    duration, int_in, k8s_data_key, k8s_name, no_control, shown,
)
from ansible_collections.runbook.ops.plugins.module_utils._rollout import WORKLOAD_KINDS, Workload, wait_rollouts

ROTATED_AT = "runbook.ops/rotated-at"
ROTATION_ANNOTATION = "runbook.ops/credential-rotation"
HOLDER = "runbook.ops/holder"
EXPIRES = "runbook.ops/expires"
PHASE = "runbook.ops/phase"
REVOKE_AFTER = "runbook.ops/revoke-after"
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "runbook.ops"}
DEFAULT_ALPHABET = string.ascii_letters + string.digits
MAX_DURATION = 100 * 365 * 86400.0
RECORD_SUFFIX = "-rotation"
POLL = 1.0


def credential_argspec() -> t.Dict[str, t.Any]:
    """Options every credential rotation module shares (the Kubernetes auth options come besides)."""
    return dict(
        secret=dict(type="dict", required=True, no_log=False, options=dict(
            namespace=dict(type="str", required=True),
            name=dict(type="str", required=True),
            user_key=dict(type="str", no_log=False),
            password_key=dict(type="str", default="password", no_log=False),
            url_key=dict(type="str", no_log=False),
        )),
        rotate_after=dict(type="str", default="30d"),
        force=dict(type="bool", default=False),
        password_length=dict(type="int", default=32, no_log=False),
        password_alphabet=dict(type="str", default=DEFAULT_ALPHABET, no_log=False),
        consumers=dict(type="list", elements="dict", default=[], options=dict(
            kind=dict(type="str", choices=list(WORKLOAD_KINDS), default="Deployment"),
            name=dict(type="str", required=True),
        )),
        discover_consumers=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=300),
        grace_period=dict(type="str", default="0"),
    )


# ----------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str
    user_key: t.Optional[str]
    password_key: str
    url_key: t.Optional[str]

    @property
    def ref(self) -> str:
        return "Secret/%s/%s" % (self.namespace, self.name)

    @property
    def record_name(self) -> str:
        return self.name[:253 - len(RECORD_SUFFIX)] + RECORD_SUFFIX


@dataclasses.dataclass(frozen=True)
class RotationOptions:
    """The Secret, the policy and the consumers, checked before anything is asked of any server."""

    secret: SecretRef
    rotate_after: float
    force: bool
    password_length: int
    password_alphabet: str
    consumers: t.Tuple[Workload, ...]
    discover_consumers: bool
    wait_timeout: int
    grace_period: float

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RotationOptions":
        spec = params["secret"]
        namespace = k8s_name("secret.namespace", spec["namespace"], label=True)
        keys = [k8s_data_key("secret.%s" % key, spec[key]) if spec[key] else None
                for key in ("user_key", "password_key", "url_key")]
        if len({key for key in keys if key}) != len([key for key in keys if key]):
            raise RunbookError("secret: user_key, password_key and url_key must be different keys")
        secret = SecretRef(namespace, k8s_name("secret.name", spec["name"]), keys[0], t.cast(str, keys[1]), keys[2])
        alphabet = "".join(sorted(set(no_control("password_alphabet", params["password_alphabet"]))))
        if any(not ("!" <= char <= "~") for char in alphabet):
            # Printable ASCII only: SCRAM's SASLprep then leaves a password as it is, and URLs and env files carry it.
            raise RunbookError("password_alphabet may hold printable ASCII characters only (no spaces)")
        if len(alphabet) < 16:
            raise RunbookError("password_alphabet must hold at least 16 different characters, not %d" % len(alphabet))
        length = int_in("password_length", params["password_length"], 16, 1024)
        consumers = tuple(Workload(item["kind"], k8s_name("consumers[%d].name" % index, item["name"]), namespace)
                          for index, item in enumerate(params["consumers"]))
        return cls(secret=secret, force=params["force"], password_length=length, password_alphabet=alphabet,
                   rotate_after=duration("rotate_after", params["rotate_after"], 0.0, MAX_DURATION, above=True),
                   consumers=consumers, discover_consumers=params["discover_consumers"],
                   wait_timeout=int_in("wait_timeout", params["wait_timeout"], 1, 86400),
                   grace_period=duration("grace_period", params["grace_period"], 0.0, MAX_DURATION))


def generate_password(length: int, alphabet: str) -> str:
    """A random password from the operating system's CSPRNG."""
    return "".join(secrets.choice(alphabet) for _index in range(length))


@dataclasses.dataclass(frozen=True)
class Login:
    """A user and its password; the password never shows in a repr."""

    user: str
    password: str = dataclasses.field(repr=False)


class Service(t.Protocol):
    """What a database does in a rotation; every method leaves the previous credential valid
    except :meth:`revoke`."""

    kind: str
    overlap: bool  # whether the previous credential stays valid once the new one is accepted

    def in_sync(self, login: Login) -> bool:
        """Whether the server accepts ``login`` as it is stored (a verifier compared, or a login)."""

    def next_user(self, current: str) -> str:
        """The user the new password is for (the same one, or the idle one of two)."""

    def apply(self, login: Login) -> None:
        """Make the server accept ``login``."""

    def works(self, login: Login) -> bool:
        """A fresh login with ``login`` succeeds."""

    def revoke(self, previous: Login, current: Login) -> bool:
        """Stop the server accepting ``previous`` (never ``current``); whether something was revoked."""


# ----------------------------------------------------------------------------------------------
# Secrets


def _decode(obj: t.Optional[K8sObject], key: t.Optional[str]) -> t.Optional[str]:
    if obj is None or not key:
        return None
    value = (obj.get("data") or {}).get(key)
    if value is None:
        return None
    try:
        return base64.b64decode(value).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise RunbookError("key %s of Secret/%s/%s is not UTF-8 text" % (
            key, obj["metadata"]["namespace"], obj["metadata"]["name"]))


def _encode(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def rewrite_url(url: str, login: Login) -> str:
    """``url`` with its user and password replaced (both percent-encoded); the rest kept as is."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise RunbookError("the URL key of the Secret does not hold a URL with a host (scheme://user:password@host/...)")
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = "%s:%s" % (urllib.parse.quote(login.user, safe=""), urllib.parse.quote(login.password, safe=""))
    return urllib.parse.urlunsplit((parts.scheme, "%s@%s" % (userinfo, host), parts.path, parts.query, parts.fragment))


def _forbidden(exc: K8sError, need: str) -> RunbookError:
    if isinstance(exc, K8sForbidden):
        return RunbookError("%s (credential rotation needs %s)" % (exc.msg, need), **exc.details)
    return exc


def read_secret(client: K8sClient, secret: SecretRef) -> K8sObject:
    try:
        obj = client.get("v1", "secrets", secret.name, secret.namespace)
    except K8sNotFound:
        raise RunbookError("%s does not exist: create it with the current credentials first" % secret.ref)
    except K8sError as exc:
        raise _forbidden(exc, "get on secrets in namespace %s" % secret.namespace)
    return obj or {}


def stored_login(obj: K8sObject, secret: SecretRef, default_user: str) -> Login:
    password = _decode(obj, secret.password_key)
    if password is None:
        raise RunbookError("%s has no key %s (the password)" % (secret.ref, secret.password_key))
    return Login(_decode(obj, secret.user_key) or default_user, password)


def write_secret(client: K8sClient, secret: SecretRef, login: Login, stamp: str) -> bool:
    """Put ``login`` into the Secret (user, password, URL) with the resourceVersion read; whether it changed."""
    def mutate(obj: K8sObject) -> K8sObject:
        data = obj.setdefault("data", None) or {}
        obj["data"] = data
        if secret.user_key:
            data[secret.user_key] = _encode(login.user)
        data[secret.password_key] = _encode(login.password)
        url = _decode(obj, secret.url_key)
        if secret.url_key and url is not None:
            data[secret.url_key] = _encode(rewrite_url(url, login))
        obj["metadata"].setdefault("annotations", None)
        obj["metadata"]["annotations"] = dict(obj["metadata"]["annotations"] or {}, **{ROTATED_AT: stamp})
        return obj
    try:
        changed, _before, _after = client.modify("v1", "secrets", secret.name, mutate, secret.namespace)
    except K8sError as exc:
        raise _forbidden(exc, "get and update on secrets in namespace %s" % secret.namespace)
    return changed


# ----------------------------------------------------------------------------------------------
# The rotation record (lock, pending credential, revocation to do)


@dataclasses.dataclass
class Record:
    """The companion Secret of a rotation in flight, or of a revocation still to do."""

    new: Login
    previous: Login
    phase: str  # "changing" (database may be changed), "restarting", "grace"
    holder: str
    expires: datetime.datetime
    revoke_after: t.Optional[datetime.datetime]
    stamp: str
    obj: K8sObject

    def held(self, now: datetime.datetime) -> bool:
        """Whether a live run holds the record: not expired and, on this host, its process alive."""
        if not self.holder or self.expires <= now:
            return False
        host, _sep, rest = self.holder.partition("/")
        pid = rest.partition("/")[0]
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True


def _holder() -> str:
    return "%s/%d/%s" % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8])


def read_record(client: K8sClient, secret: SecretRef) -> t.Optional[Record]:
    try:
        obj = client.get("v1", "secrets", secret.record_name, secret.namespace, missing_ok=True)
    except K8sError as exc:
        raise _forbidden(exc, "get on secrets in namespace %s" % secret.namespace)
    if obj is None:
        return None
    notes = obj["metadata"].get("annotations") or {}
    revoke_after = notes.get(REVOKE_AFTER)
    return Record(new=Login(_decode(obj, "user") or "", _decode(obj, "password") or ""),
                  previous=Login(_decode(obj, "previous_user") or "", _decode(obj, "previous_password") or ""),
                  phase=notes.get(PHASE, "changing"), holder=notes.get(HOLDER, ""),
                  expires=parse_time(notes.get(EXPIRES) or "1970-01-01T00:00:00Z"),
                  revoke_after=parse_time(revoke_after) if revoke_after else None,
                  stamp=notes.get(ROTATED_AT, ""), obj=obj)


def _record_body(secret: SecretRef, record: Record) -> K8sObject:
    notes = {HOLDER: record.holder, EXPIRES: isoformat(record.expires), PHASE: record.phase, ROTATED_AT: record.stamp}
    if record.revoke_after is not None:
        notes[REVOKE_AFTER] = isoformat(record.revoke_after)
    metadata = dict(record.obj.get("metadata") or {}, name=secret.record_name, namespace=secret.namespace,
                    labels=dict(MANAGED_LABELS), annotations=notes)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata, "data": {
        "user": _encode(record.new.user), "password": _encode(record.new.password),
        "previous_user": _encode(record.previous.user), "previous_password": _encode(record.previous.password)}}


def save_record(client: K8sClient, secret: SecretRef, record: Record) -> bool:
    """Create or update the record with the resourceVersion it was read with; False when another
    run created or changed it first."""
    body = _record_body(secret, record)
    try:
        if record.obj.get("metadata", {}).get("resourceVersion"):
            record.obj = client.replace("v1", "secrets", body, secret.namespace)
        else:
            record.obj = client.create("v1", "secrets", body, secret.namespace)
    except K8sConflict:
        return False
    except K8sError as exc:
        raise _forbidden(exc, "create, update and delete on secrets in namespace %s" % secret.namespace)
    return True


def delete_record(client: K8sClient, secret: SecretRef) -> None:
    try:
        client.delete("v1", "secrets", secret.record_name, secret.namespace, missing_ok=True)
    except K8sError as exc:
        raise _forbidden(exc, "delete on secrets in namespace %s" % secret.namespace)


# ----------------------------------------------------------------------------------------------
# Consumers


def discover(client: K8sClient, opts: RotationOptions) -> t.Tuple[t.List[Workload], t.List[str]]:
    """The workloads to restart (listed ones first, in their order, then the discovered ones by kind
    and name) and the CronJobs that use the Secret (reported: their next Job reads it anyway)."""
    ns, name = opts.secret.namespace, opts.secret.name
    ordered = list(opts.consumers)
    for listed in ordered:
        try:
            client.get("apps/v1", WORKLOAD_KINDS[listed.kind], listed.name, listed.namespace)
        except K8sError as exc:
            raise _forbidden(exc, "get on the workloads it restarts")
    if not opts.discover_consumers:
        return ordered, []
    found, cronjobs = secret_consumers(client, ns, name)
    return ordered + [item for item in found if item not in ordered], cronjobs


def secret_consumers(client: K8sClient, ns: str, name: str) -> t.Tuple[t.List[Workload], t.List[str]]:
    """The Deployments, StatefulSets and DaemonSets of ``ns`` whose pod template references Secret
    ``name`` (by kind and name), and the CronJobs that do (as ``CronJob/ns/name``)."""
    found: t.List[Workload] = []
    for kind, plural in WORKLOAD_KINDS.items():
        try:
            items = client.list("apps/v1", plural, ns)
        except K8sError as exc:
            raise _forbidden(exc, "list on %s in namespace %s" % (plural, ns))
        for item in sorted(items, key=lambda obj: obj["metadata"]["name"]):
            spec = ((item.get("spec") or {}).get("template") or {}).get("spec") or {}
            if name in referenced_secrets(spec):
                found.append(Workload(kind, item["metadata"]["name"], ns))
    try:
        jobs = client.list("batch/v1", "cronjobs", ns)
    except K8sError as exc:
        raise _forbidden(exc, "list on cronjobs in namespace %s" % ns)
    cronjobs = []
    for job in jobs:
        spec = (((job.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        if name in referenced_secrets(spec.get("spec") or {}):
            cronjobs.append("CronJob/%s/%s" % (ns, job["metadata"]["name"]))
    return found, sorted(cronjobs)


@dataclasses.dataclass
class ConsumerReport:
    restarted: t.List[str] = dataclasses.field(default_factory=list)
    current: t.List[str] = dataclasses.field(default_factory=list)
    failed: t.List[str] = dataclasses.field(default_factory=list)
    not_restarted: t.List[str] = dataclasses.field(default_factory=list)
    cronjobs: t.List[str] = dataclasses.field(default_factory=list)

    def facts(self) -> t.Dict[str, t.List[str]]:
        return dataclasses.asdict(self)


def restart_consumers(client: K8sClient, workloads: t.Sequence[Workload], stamp: str, timeout: int,
                      report: ConsumerReport) -> t.Optional[str]:
    """Restart each workload in order and wait for it to be Ready before the next one; the first
    failure stops the sequence and is returned in words (None when all are Ready). A workload whose
    template already carries this rotation is only waited for (a resumed run)."""
    for index, item in enumerate(workloads):
        plural = WORKLOAD_KINDS[item.kind]
        try:
            obj = client.get("apps/v1", plural, item.name, item.namespace) or {}
            notes = (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations") or {}
            if notes.get(ROTATION_ANNOTATION) == stamp:
                report.current.append(item.ref)
            else:
                patch = {"spec": {"template": {"metadata": {"annotations": {
                    ROTATION_ANNOTATION: stamp, "kubectl.kubernetes.io/restartedAt": stamp}}}}}
                obj = client.patch("apps/v1", plural, item.name, patch, item.namespace, patch_type="strategic")
                report.restarted.append(item.ref)
            failure = wait_rollouts(client, [(item.kind, item.name, item.namespace,
                                              int(obj["metadata"].get("generation", 0)))], timeout)
        except RunbookError as exc:
            failure = exc.msg if not isinstance(exc, K8sForbidden) else _forbidden(
                exc, "get and patch on %ss in namespace %s" % (item.kind.lower(), item.namespace)).msg
        if failure:
            report.failed.append(item.ref)
            report.not_restarted.extend(other.ref for other in workloads[index + 1:])
            return "%s did not become Ready: %s" % (item.ref, failure)
    return None


# ----------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Run:
    """One rotation task: what it was given and what it did so far (the result is built from it)."""

    task: Task[t.Any]
    client: K8sClient
    opts: RotationOptions
    service: Service
    default_user: str
    started: datetime.datetime = dataclasses.field(default_factory=utcnow)
    steps: t.List[t.Dict[str, str]] = dataclasses.field(default_factory=list)
    report: ConsumerReport = dataclasses.field(default_factory=ConsumerReport)
    concurrent: bool = False
    rotated: bool = False
    revoked: bool = False
    user: str = ""
    rotated_at: t.Optional[datetime.datetime] = None

    def step(self, name: str, outcome: str, detail: str = "") -> None:
        self.steps.append({"step": name, "outcome": outcome, "detail": detail})

    def result(self, changed: bool, msg: str) -> Result:
        if self.task.check_mode and changed:
            msg = "(check mode) " + msg
        next_rotation = self.rotated_at + datetime.timedelta(seconds=self.opts.rotate_after) if self.rotated_at else None
        return {"changed": changed, "msg": msg, "rotated": self.rotated, "user": self.user,
                "secret": self.opts.secret.ref, "steps": self.steps, "consumers": self.report.facts(),
                "revoked": self.revoked, "concurrent_change": self.concurrent,
                "next_rotation": isoformat(next_rotation) if next_rotation else None,
                "api_requests": self.client.requests}

    def failure(self, msg: str) -> RunbookError:
        return RunbookError.keeping(msg, self.result(True, msg))

    def lease(self, workloads: t.Sequence[Workload]) -> datetime.datetime:
        # Long enough for every consumer's wait plus the database work; a crashed holder on this host
        # is recognised at once (its process is gone), one elsewhere when this expires.
        return utcnow() + datetime.timedelta(seconds=self.opts.wait_timeout * (len(workloads) + 1) + 120)


def rotate_credential(task: Task[t.Any], service: Service, opts: RotationOptions, default_user: str) -> Result:
    """The whole rotation (see the module docstring); the partial result is kept on every failure."""
    client = task.client(K8sClient.from_params)
    run = Run(task=task, client=client, opts=opts, service=service, default_user=default_user)
    try:
        return _rotate(run)
    except RunbookError as exc:
        if "steps" not in exc.details:
            exc.details.update({key: value for key, value in run.result(run.rotated, exc.msg).items() if key != "msg"})
        raise


def _rotate(run: Run) -> Result:
    opts, client = run.opts, run.client
    workloads, run.report.cronjobs = discover(client, opts)
    record = read_record(client, opts.secret)
    if record is not None and record.held(utcnow()):
        if run.task.check_mode:
            run.step("lock", "held", "another run is rotating %s (%s)" % (opts.secret.ref, record.holder))
            return run.result(False, "another run is rotating %s now; nothing to report until it ends" % opts.secret.ref)
        record = _wait_for_release(run)
        if record is None:
            return _done_by_other(run)
    current = _load(run)
    if record is not None:
        resumed = _resume(run, record, current, workloads)
        if resumed is not None:
            return resumed
        current = _load(run)
    return _rotate_if_due(run, current, workloads)


def _done_by_other(run: Run) -> Result:
    """Another run held the record and finished: its rotation is the one asked for."""
    current = _load(run)
    run.step("rotate", "done by another run", "rotated at %s" % (isoformat(run.rotated_at) if run.rotated_at else "?"))
    return run.result(False, "another run rotated %s at the same time; %s is current" % (run.opts.secret.ref, current.user))


def _load(run: Run) -> Login:
    obj = read_secret(run.client, run.opts.secret)
    stamp = ((obj.get("metadata") or {}).get("annotations") or {}).get(ROTATED_AT)
    try:
        run.rotated_at = parse_time(stamp) if stamp else None
    except RunbookError:
        run.task.warn("annotation %s of %s is not a timestamp (%s); taken as never rotated"
                      % (ROTATED_AT, run.opts.secret.ref, shown(stamp)))
        run.rotated_at = None
    current = stored_login(obj, run.opts.secret, run.default_user)
    run.user = current.user
    return current


def _wait_for_release(run: Run) -> t.Optional[Record]:
    """Wait while a live run holds the record; the record as released (None when deleted)."""
    run.concurrent = True
    while True:
        record = read_record(run.client, run.opts.secret)
        if record is None or not record.held(utcnow()):
            run.step("lock", "waited", "another run held the rotation record of %s" % run.opts.secret.ref)
            return record
        time.sleep(POLL)


def _rotate_if_due(run: Run, current: Login, workloads: t.Sequence[Workload]) -> Result:
    opts = run.opts
    reason = _due(run, current)
    if reason is None:
        run.step("check", "not due", "last rotation %s" % isoformat(t.cast(datetime.datetime, run.rotated_at)))
        return run.result(False, "%s is current: %s logs in, last rotated %s, next rotation %s" % (
            opts.secret.ref, current.user, isoformat(t.cast(datetime.datetime, run.rotated_at)),
            run.result(False, "")["next_rotation"]))
    new_user = run.service.next_user(current.user)
    run.step("check", "due", reason)
    if run.task.check_mode:
        run.rotated, run.user = True, new_user
        return run.result(True, "%s would be rotated (%s): new password for %s" % (opts.secret.ref, reason, new_user))
    new = Login(new_user, generate_password(opts.password_length, opts.password_alphabet))
    stamp = isoformat(utcnow())
    record = Record(new=new, previous=current, phase="changing", holder=_holder(), expires=run.lease(workloads),
                    revoke_after=None, stamp=stamp, obj={})
    if not save_record(run.client, opts.secret, record):
        # Another run created the record between our read and our create: it rotates, we report.
        if _wait_for_release(run) is None:
            return _done_by_other(run)
        raise run.failure("another run started rotating %s at the same time and did not finish; run again to "
                          "continue its rotation" % opts.secret.ref)
    run.step("lock", "taken", "rotation record %s" % opts.secret.record_name)
    run.service.apply(new)
    run.step("database", "changed", "%s %s accepts the new password" % (run.service.kind, new.user))
    return _switch(run, record, workloads, reason)


def _due(run: Run, current: Login) -> t.Optional[str]:
    opts = run.opts
    if not run.service.in_sync(current):
        return "the password in %s does not log in as %s" % (opts.secret.ref, current.user)
    if opts.force:
        return "forced"
    if run.rotated_at is None:
        return "no rotation recorded on %s" % opts.secret.ref
    if run.rotated_at + datetime.timedelta(seconds=opts.rotate_after) <= utcnow():
        return "last rotation %s is older than rotate_after" % isoformat(run.rotated_at)
    return None


def _switch(run: Run, record: Record, workloads: t.Sequence[Workload], reason: str) -> Result:
    """The database accepts ``record.new``: write the Secret, move the consumers, revoke the previous."""
    opts = run.opts
    try:
        write_secret(run.client, opts.secret, record.new, record.stamp)
    except RunbookError as exc:
        raise run.failure(_unwritten(run, record, exc.msg))
    run.rotated, run.user, run.rotated_at = True, record.new.user, parse_time(record.stamp)
    run.step("secret", "written", "%s points at %s" % (opts.secret.ref, record.new.user))
    record.phase = "restarting"
    if not save_record(run.client, opts.secret, record):
        raise run.failure("the rotation record of %s was changed by someone else during the rotation" % opts.secret.ref)
    failure = restart_consumers(run.client, workloads, record.stamp, opts.wait_timeout, run.report)
    if failure:
        run.step("consumers", "failed", failure)
        _release(run, record)
        raise run.failure("%s; the previous credential of %s stays valid (not revoked); fix the workload and run "
                          "again to finish the rotation" % (failure, record.previous.user))
    run.step("consumers", "ready", "%d restarted, %d already current" % (len(run.report.restarted), len(run.report.current)))
    if not run.service.works(record.new):
        _release(run, record)
        raise run.failure("the new password of %s does not log in after the consumers moved; the previous credential "
                          "stays valid" % record.new.user)
    run.step("verify", "ok", "%s logs in with the new password" % record.new.user)
    return _finish(run, record, "%s rotated (%s): %s now uses %s" % (opts.secret.ref, reason, opts.secret.ref, record.new.user))


def _unwritten(run: Run, record: Record, reason: str) -> str:
    """Why the Secret was not written and what the next run does: the database already accepts the
    new password, which the rotation record (written before the database change) keeps."""
    previous = ("the previous credential of %s stays valid meanwhile" % record.previous.user if run.service.overlap
                else "the previous password no longer logs in, so consumers that restart meanwhile cannot connect")
    return ("writing %s failed after %s %s accepted the new password: %s. The new password is kept in the rotation "
            "record Secret/%s/%s; run again once the API server answers and the next run finishes the rotation with "
            "it (%s)" % (run.opts.secret.ref, run.service.kind, record.new.user, reason, run.opts.secret.namespace,
                         run.opts.secret.record_name, previous))


def _release(run: Run, record: Record) -> None:
    record.holder, record.expires = "", utcnow()
    if not save_record(run.client, run.opts.secret, record):
        run.task.warn("could not release the rotation record of %s; the next run takes it over" % run.opts.secret.ref)


def _finish(run: Run, record: Record, msg: str) -> Result:
    """Revoke the previous credential now, or record when (``grace_period``); release the record."""
    opts = run.opts
    if opts.grace_period > 0 and run.service.overlap and record.previous != record.new:
        record.phase, record.revoke_after = "grace", utcnow() + datetime.timedelta(seconds=opts.grace_period)
        _release(run, record)
        run.step("revoke", "scheduled", "previous credential of %s valid until %s" % (
            record.previous.user, isoformat(record.revoke_after)))
        return run.result(True, msg + "; the previous credential stays valid until %s" % isoformat(record.revoke_after))
    run.revoked = run.service.revoke(record.previous, record.new)
    run.step("revoke", "done" if run.revoked else "nothing to revoke", record.previous.user)
    delete_record(run.client, opts.secret)
    return run.result(True, msg + ("; previous credential revoked" if run.revoked else ""))


def _resume(run: Run, record: Record, current: Login, workloads: t.Sequence[Workload]) -> t.Optional[Result]:
    """Continue a rotation a run left behind (interrupted, a consumer failed, or a grace period);
    None when there is nothing to continue and a normal rotation check follows."""
    opts = run.opts
    if record.phase == "grace":
        if record.revoke_after is not None and record.revoke_after > utcnow() and not opts.force:
            run.step("revoke", "waiting", "previous credential of %s valid until %s" % (
                record.previous.user, isoformat(record.revoke_after)))
            return run.result(False, "%s is current (%s); the previous credential of %s is revoked by a run after %s"
                              % (opts.secret.ref, current.user, record.previous.user, isoformat(record.revoke_after)))
        if run.task.check_mode:
            run.step("revoke", "due", record.previous.user)
            return run.result(True, "the previous credential of %s would be revoked" % record.previous.user)
        return _take_and_finish(run, record, "grace period of %s's previous credential ended" % opts.secret.ref)
    if current == record.new:
        reason = "finishing the interrupted rotation of %s" % opts.secret.ref
        if run.task.check_mode:
            run.step("resume", "due", reason)
            return run.result(True, reason)
        return _take_and_switch(run, record, workloads, reason)
    if run.service.works(record.new):
        reason = "the interrupted rotation's new password logs in as %s: recovered" % record.new.user
        if run.task.check_mode:
            run.step("resume", "due", reason)
            return run.result(True, reason)
        return _take_and_switch(run, record, workloads, reason)
    run.step("resume", "discarded", "the interrupted rotation never reached the database")
    if not run.task.check_mode:
        delete_record(run.client, opts.secret)
    return None


def _take(run: Run, record: Record, workloads: t.Sequence[Workload]) -> None:
    record.holder, record.expires = _holder(), run.lease(workloads)
    if not save_record(run.client, run.opts.secret, record):
        raise run.failure("another run took over the rotation record of %s; run again" % run.opts.secret.ref)
    run.step("lock", "taken over", "rotation record %s" % run.opts.secret.record_name)


def _take_and_switch(run: Run, record: Record, workloads: t.Sequence[Workload], reason: str) -> Result:
    _take(run, record, workloads)
    run.step("resume", "continued", reason)
    return _switch(run, record, workloads, reason)


def _take_and_finish(run: Run, record: Record, reason: str) -> Result:
    _take(run, record, [])
    run.user = record.new.user
    record.revoke_after = None
    run.opts = dataclasses.replace(run.opts, grace_period=0.0)
    return _finish(run, record, reason)
