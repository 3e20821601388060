# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where ``cert_renew`` finds certificates, one class per kind of place, all behind one small
interface (:class:`CertificateSource`): ``read()`` the certificates there now, and ``renew()`` one
that the run judged due.

* :class:`TlsSecretSource`: kubernetes.io/tls Secrets; renewed by the issuer and written back with the
  resourceVersion they were read with.
* :class:`CertManagerSource`: cert-manager Certificates, judged on their status; renewed the way
  ``cmctl renew`` does it (the ``Issuing`` condition through the status subresource).
* :class:`EndpointSource`: a live TLS endpoint; report only.
* :class:`FileSource`: PEM files on the managed host; the key, certificate and CA file are replaced
  together or not at all.

What the sources find and do is written to one :class:`Ledger`; :mod:`._cert_renew` judges and
turns the ledger into the module result.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import os
import socket
import ssl
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._cert_files import FileWrite, unwritable, write_together
from ansible_collections.runbook.ops.plugins.module_utils._cert_issuer import Issuer, KeyPolicy, renew_certificate
from ansible_collections.runbook.ops.plugins.module_utils._cert_x509 import (
    cert_facts, cert_pem, key_pem, load_certificates, not_after, not_before, read_pem_file,
)
from ansible_collections.runbook.ops.plugins.module_utils._common import (
    RunbookError, isoformat, parse_time, tls_handshake, utcnow,
)
from ansible_collections.runbook.ops.plugins.module_utils._findings import Finding, finding
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sConflict, K8sError, K8sForbidden, K8sNotFound, K8sObject, object_ref,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import k8s_name, local_path, no_control, number, shown

try:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
except ImportError:  # pragma: no cover - reported by run_cert_renew (require_cryptography)
    pass

SOURCE_TYPES = ("tls_secret", "certificate", "endpoint", "file")
CM_API = "cert-manager.io/v1"
CHECK = "certificates"
SECRET_TLS = "kubernetes.io/tls"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


# ----------------------------------------------------------------------------------------------
# Options of one source


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """One entry of ``sources``. The argument spec already required what each type needs (``host``,
    ``path``, ``name`` or ``label_selector`` or ``all``) and refused exclusive pairs; :meth:`check`
    refuses what it cannot express and every value that must not reach a URL, a socket or a path."""

    where: str  # "sources[0]", for messages
    type: str
    namespace: t.Optional[str]
    name: t.Optional[str]
    label_selector: t.Optional[str]
    all: t.Optional[bool]
    host: t.Optional[str]
    port: int
    server_name: t.Optional[str]
    path: t.Optional[str]
    key_path: t.Optional[str]
    ca_path: t.Optional[str]

    @property
    def needs_kubernetes(self) -> bool:
        return self.type in ("tls_secret", "certificate")

    def check(self) -> None:
        where = "%s (type %s)" % (self.where, self.type)
        self._check_values()
        if self.type == "tls_secret" and self.all:
            raise RunbookError("%s: use label_selector to select several Secrets (all is for certificate)" % where)
        if self.type == "certificate" and self.label_selector:
            raise RunbookError("%s: use name or all: true (label_selector is for tls_secret)" % where)
        # all: false counts as given for the argument spec; it selects nothing.
        if self.needs_kubernetes and not (self.name or self.label_selector or self.all):
            wanted = "label_selector" if self.type == "tls_secret" else "all: true"
            raise RunbookError("%s needs name or %s" % (where, wanted))

    def _check_values(self) -> None:
        """The names, host, port and paths, checked before anything is read."""
        if self.namespace:
            k8s_name("%s.namespace" % self.where, self.namespace, label=True)
        if self.name:
            k8s_name("%s.name" % self.where, self.name)
        if self.label_selector:
            selector = no_control("%s.label_selector" % self.where, self.label_selector)
            if len(selector) > 1024:
                raise RunbookError("%s.label_selector %s is longer than 1024 characters" % (self.where, shown(selector)))
        if self.host is not None:
            host = no_control("%s.host" % self.where, self.host)
            if not host.strip() or len(host) > 253 or host != host.strip():
                raise RunbookError("%s.host %s is not a host name or address (1 to 253 characters, no spaces around "
                                   "it)" % (self.where, shown(host)))
        if self.type == "endpoint":
            number("%s.port" % self.where, self.port, 1, 65535)
        if self.server_name:
            name = no_control("%s.server_name" % self.where, self.server_name)
            if len(name) > 253 or " " in name:
                raise RunbookError("%s.server_name %s is not a TLS server name (at most 253 characters, no spaces)"
                                   % (self.where, shown(name)))
        for option in ("path", "key_path", "ca_path"):
            value = getattr(self, option)
            if value is not None:
                local_path("%s.%s" % (self.where, option), value)


# ----------------------------------------------------------------------------------------------
# What was found and done


class Entry:
    """One certificate seen: its facts, the judgement and what was done."""

    def __init__(self, source: str, obj: str) -> None:
        self.source = source
        self.obj = obj
        self.facts: t.Dict[str, t.Any] = {"subject": None, "sans": [], "issuer": None, "serial": None,
                                          "not_before": None, "not_after": None}
        self.days_left: t.Optional[float] = None
        self.should_renew = False
        self.renewed = False
        self.msg = ""
        self.severity = "ok"
        self.details: t.Dict[str, t.Any] = {}
        self.new: t.Optional[t.Dict[str, t.Any]] = None

    def result(self) -> t.Dict[str, t.Any]:
        out: t.Dict[str, t.Any] = {"source": self.source, "object": self.obj}
        out.update(self.facts)
        out.update({"days_left": self.days_left, "should_renew": self.should_renew, "renewed": self.renewed,
                    "msg": self.msg, "new": self.new})
        return out

    def finding(self) -> Finding:
        details = dict(self.details)
        details.update({"days_left": self.days_left, "not_after": self.facts.get("not_after"),
                        "should_renew": self.should_renew, "renewed": self.renewed})
        return finding(self.severity, CHECK, self.obj, "%s: %s" % (self.obj, self.msg), details)


@dataclasses.dataclass
class Current:
    """A certificate as its source holds it now, for the run to judge.

    ``validity`` is None when there is nothing to judge yet (a Certificate cert-manager has not issued:
    ``unjudged`` says so); ``problems`` make it critical whatever its dates (a Certificate not Ready).
    ``leaf`` and ``obj`` are what the source needs to renew it.
    """

    entry: Entry
    validity: t.Optional[t.Tuple[datetime.datetime, datetime.datetime]]
    leaf: t.Optional["x509.Certificate"] = None
    obj: t.Optional[K8sObject] = None
    unjudged: str = ""
    problems: t.List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PendingIssue:
    """A Certificate whose ``Issuing`` this run set, waited for with ``wait``."""

    entry: Entry
    name: str
    namespace: str
    secret_name: str
    not_after_before: datetime.datetime


class Ledger:
    """Everything the sources found and did, in the order they did it."""

    def __init__(self) -> None:
        self.entries: t.List[Entry] = []
        self.extra_findings: t.List[Finding] = []
        self.renewed_secrets: t.Dict[str, t.Set[str]] = {}
        self.diffs: t.List[t.Dict[str, t.Any]] = []
        self.failures: t.List[str] = []
        self.pending: t.List[PendingIssue] = []

    def unreadable(self, obj: str, source: str, exc: RunbookError, severity: t.Optional[str] = None) -> None:
        entry = Entry(source, obj)
        if severity is None:
            severity = "unknown" if isinstance(exc, K8sForbidden) else "critical"
        entry.severity = severity
        entry.msg = "could not be checked: %s" % exc.msg if severity == "unknown" else exc.msg
        if isinstance(exc, K8sError):
            entry.details["status"] = exc.status
        self.entries.append(entry)

    def renewal_failed(self, entry: Entry, exc: RunbookError) -> None:
        """Keep going with the other sources; the task fails at the end with every result returned."""
        entry.renewed = False
        entry.new = None
        entry.severity = "critical"
        entry.msg += "; renewal failed: %s" % exc.msg
        if self.diffs and self.diffs[-1]["object"] == entry.obj:
            self.diffs.pop()
        self.failures.append(exc.msg)

    def renewed_secret(self, namespace: str, name: str) -> None:
        self.renewed_secrets.setdefault(namespace, set()).add(name)


@dataclasses.dataclass
class SourceContext:
    """What every source may use: the ledger, check mode, the issuer (None: report only), how new keys
    are made, and the Kubernetes client, opened on first use by ``open_client``."""

    ledger: Ledger
    check_mode: bool
    issuer: t.Optional[Issuer]
    key_policy: KeyPolicy
    connect_timeout: float
    wait: bool
    open_client: t.Callable[[], K8sClient]
    opened: t.Optional[K8sClient] = None

    def client(self) -> K8sClient:
        if self.opened is None:
            self.opened = self.open_client()
        return self.opened

    def can_issue(self, entry: Entry) -> bool:
        if self.issuer is None:
            entry.msg += "; not renewed: no issuer given"
            return False
        return True

    def issued(self, entry: Entry, cert: "x509.Certificate") -> None:
        """Record a new certificate on ``entry`` (in check mode: that one would be made) and its diff."""
        facts = cert_facts(cert)
        entry.renewed = True
        entry.new = None if self.check_mode else {k: facts[k] for k in ("serial", "not_before", "not_after", "issuer")}
        entry.msg += "; %s by the %s issuer: new certificate valid until %s" % (
            "would renew" if self.check_mode else "renewed", self.issuer.kind if self.issuer else "", facts["not_after"])
        if not self.check_mode:
            entry.severity = "info"
        self.ledger.diffs.append({"object": entry.obj,
                                  "before": {k: entry.facts[k] for k in ("serial", "issuer", "not_after")},
                                  "after": {"serial": "(new)" if self.check_mode else facts["serial"],
                                            "issuer": facts["issuer"], "not_after": facts["not_after"]}})


class CertificateSource(t.Protocol):
    """One kind of place certificates live."""

    def read(self) -> t.Iterator[Current]:
        """The certificates there now; one that cannot be read is recorded in the ledger instead."""

    def renew(self, current: Current) -> None:
        """Renew (or say why not) a certificate the run judged due."""


def _readable(entry: Entry, leaf: "x509.Certificate", **kwargs: t.Any) -> Current:
    entry.facts.update(cert_facts(leaf))
    return Current(entry, (not_before(leaf), not_after(leaf)), leaf=leaf, **kwargs)


# ----------------------------------------------------------------------------------------------
# kubernetes.io/tls Secrets


class TlsSecretSource:
    def __init__(self, options: SourceOptions, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx

    def read(self) -> t.Iterator[Current]:
        for secret in self._secrets():
            current = self._current(secret)
            if current is not None:
                yield current

    def _secrets(self) -> t.List[K8sObject]:
        client, ns, name = self.ctx.client(), self.options.namespace, self.options.name
        if name:
            try:
                found = client.get("v1", "secrets", name, ns)
            except (K8sForbidden, K8sNotFound) as exc:
                self.ctx.ledger.unreadable(object_ref("Secret", name, ns), "tls_secret", exc)
                return []
            return [found] if found is not None else []
        selector = self.options.label_selector or ""
        try:
            secrets = client.list("v1", "secrets", ns, label_selector=selector, field_selector="type=%s" % SECRET_TLS)
        except (K8sForbidden, K8sNotFound) as exc:
            self.ctx.ledger.unreadable(object_ref("Secret", "*", ns), "tls_secret", exc,
                                       "unknown" if isinstance(exc, K8sForbidden) else "warning")
            return []
        except K8sError as exc:
            if exc.status == 400:
                raise RunbookError("label_selector %s (Secrets in namespace %s) is refused by the API server as a "
                                   "label selector: %s" % (shown(selector), ns, exc.api_message or exc.msg))
            raise
        if not secrets:
            self.ctx.ledger.extra_findings.append(finding(
                "warning", CHECK, object_ref("Secret", "*", ns),
                "no %s Secret in namespace %s matches %s" % (SECRET_TLS, ns, selector), {"label_selector": selector}))
        return secrets

    def _current(self, secret: K8sObject) -> t.Optional[Current]:
        meta = secret["metadata"]
        obj = object_ref("Secret", meta["name"], meta.get("namespace"))
        data = secret.get("data") or {}
        try:
            if secret.get("type") != SECRET_TLS and "tls.crt" not in data:
                raise RunbookError("%s is of type %s and has no tls.crt" % (obj, secret.get("type")))
            if "tls.crt" not in data:
                raise RunbookError("%s has no tls.crt" % obj)
            chain = load_certificates(base64.b64decode(data["tls.crt"]), "%s tls.crt" % obj)
        except RunbookError as exc:
            self.ctx.ledger.unreadable(obj, "tls_secret", exc)
            return None
        return _readable(Entry("tls_secret", obj), chain[0], obj=secret)

    def renew(self, current: Current) -> None:
        entry, secret, leaf = current.entry, current.obj, current.leaf
        if secret is None or leaf is None:
            raise AssertionError("a readable Secret has its object and certificate")
        if not self.ctx.can_issue(entry) or self.ctx.issuer is None:
            return
        meta, data = secret["metadata"], secret.get("data") or {}
        try:
            new = renew_certificate(self.ctx.issuer, self.ctx.key_policy, obj=entry.obj, leaf=leaf,
                                    old_key_pem=base64.b64decode(data["tls.key"]) if data.get("tls.key") else None,
                                    key_what="%s tls.key" % entry.obj)
        except RunbookError as exc:
            self.ctx.ledger.renewal_failed(entry, exc)
            return
        self.ctx.issued(entry, new.cert)
        if not self.ctx.check_mode:
            body = dict(secret)
            body["data"] = dict(data, **{"tls.crt": _b64(cert_pem(new.cert)), "tls.key": _b64(key_pem(new.key)),
                                         "ca.crt": _b64(new.ca_pem)})
            body.pop("stringData", None)
            try:
                self.ctx.client().replace("v1", "secrets", body)
            except K8sConflict:
                self.ctx.ledger.renewal_failed(entry, RunbookError(
                    "renew %s: the Secret changed since it was read (resourceVersion %s); nothing was written for "
                    "it; run again to judge the current certificate" % (entry.obj, meta.get("resourceVersion"))))
                return
            except (K8sForbidden, K8sNotFound) as exc:
                self.ctx.ledger.renewal_failed(entry, RunbookError("renew %s: %s; nothing was written for it"
                                                                   % (entry.obj, exc.msg)))
                return
        self.ctx.ledger.renewed_secret(meta.get("namespace", ""), meta["name"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----------------------------------------------------------------------------------------------
# cert-manager Certificates


class CertManagerSource:
    def __init__(self, options: SourceOptions, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx

    def read(self) -> t.Iterator[Current]:
        client, ns, name = self.ctx.client(), self.options.namespace, self.options.name
        if name:
            try:
                found = client.get(CM_API, "certificates", name, ns)
            except (K8sForbidden, K8sNotFound) as exc:
                self.ctx.ledger.unreadable(object_ref("Certificate", name, ns), "certificate", exc)
                return
            certs = [found] if found is not None else []
        else:
            try:
                certs = client.list(CM_API, "certificates", ns)
            except (K8sForbidden, K8sNotFound) as exc:
                self.ctx.ledger.unreadable(object_ref("Certificate", "*", ns), "certificate", exc,
                                           "unknown" if isinstance(exc, K8sForbidden) else "warning")
                return
        for cert in certs:
            yield self._current(cert)

    def _current(self, cert: K8sObject) -> Current:
        client = self.ctx.client()
        meta, spec, status = cert["metadata"], cert.get("spec") or {}, cert.get("status") or {}
        ns = meta.get("namespace", "")
        obj = object_ref("Certificate", meta["name"], ns)
        entry = Entry("certificate", obj)
        sans = (["DNS:" + d for d in spec.get("dnsNames") or []] + ["IP:" + i for i in spec.get("ipAddresses") or []]
                + ["URI:" + u for u in spec.get("uris") or []] + ["email:" + e for e in spec.get("emailAddresses") or []])
        ref = spec.get("issuerRef") or {}
        entry.facts.update({"subject": ("CN=" + spec["commonName"]) if spec.get("commonName") else "",
                            "sans": sans, "issuer": "%s/%s" % (ref.get("kind", "Issuer"), ref.get("name", "")),
                            "not_before": status.get("notBefore"), "not_after": status.get("notAfter")})
        entry.details.update({"namespace": ns, "secret": spec.get("secretName")})
        facts = secret_facts(client, ns, spec.get("secretName"))
        entry.facts.update({k: facts[k] for k in ("subject", "sans", "issuer", "serial")} if facts else {})
        ready = _conditions(status).get("Ready") or {}
        problems = []
        if ready.get("status") != "True":
            problems.append("not Ready (%s: %s)" % (ready.get("reason", "no Ready condition"), ready.get("message", ""))
                            if ready else "no Ready condition")
        if not status.get("notAfter"):
            return Current(entry, None, obj=cert, unjudged="not issued yet (no status.notAfter)", problems=problems)
        end = parse_time(status["notAfter"], "%s status.notAfter" % obj)
        start = parse_time(status["notBefore"], "%s status.notBefore" % obj) if status.get("notBefore") \
            else end - datetime.timedelta(days=90)
        return Current(entry, (start, end), obj=cert, problems=problems)

    def renew(self, current: Current) -> None:
        entry, cert = current.entry, current.obj
        if cert is None:
            raise AssertionError("a Certificate source always has its object")
        meta, spec, status = cert["metadata"], cert.get("spec") or {}, cert.get("status") or {}
        issuing = _conditions(status).get("Issuing") or {}
        if issuing.get("status") == "True" or not self._trigger(meta["name"], meta.get("namespace", "")):
            entry.msg += ("; already issuing (%s), nothing to do" % issuing.get("reason", "Issuing")
                          if issuing.get("status") == "True" else "; already issuing, nothing to do")
            entry.details["issuing"] = True
            return
        entry.renewed = True
        entry.details["issuing"] = True
        self.ctx.ledger.diffs.append({"object": entry.obj, "before": {"Issuing": issuing.get("status", "absent")},
                                      "after": {"Issuing": "True (ManuallyTriggered)"}})
        if self.ctx.check_mode:
            entry.msg += "; would set Issuing to trigger cert-manager (check mode)"
            return
        entry.msg += "; Issuing set: cert-manager re-issues it"
        if entry.severity != "critical":
            entry.severity = "info"
        if self.ctx.wait:
            before = parse_time(status["notAfter"]) if status.get("notAfter") else EPOCH
            self.ctx.ledger.pending.append(PendingIssue(entry, meta["name"], meta.get("namespace", ""),
                                                        spec.get("secretName") or "", before))

    def _trigger(self, name: str, ns: str) -> bool:
        """Set Issuing=True/ManuallyTriggered through the status subresource, with the read
        resourceVersion (a concurrent change is read again and judged again)."""
        client = self.ctx.client()
        stamp = isoformat(utcnow())

        def mutate(current: K8sObject) -> t.Optional[K8sObject]:
            conditions = current.setdefault("status", {}).setdefault("conditions", [])
            if any(c.get("type") == "Issuing" and c.get("status") == "True" for c in conditions):
                return None
            conditions[:] = [c for c in conditions if c.get("type") != "Issuing"]
            conditions.append({
                "type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
                "message": "Certificate re-issuance manually triggered by runbook.ops.cert_renew",
                "lastTransitionTime": stamp,
                "observedGeneration": (current.get("metadata") or {}).get("generation", 1),
            })
            return current

        if self.ctx.check_mode:
            current = client.get(CM_API, "certificates", name, ns)
            return current is not None and mutate(current) is not None
        changed, _before, _after = client.modify(CM_API, "certificates", name, mutate, ns, subresource="status")
        return changed


def _conditions(status: t.Mapping[str, t.Any]) -> t.Dict[str, t.Dict[str, t.Any]]:
    return {c.get("type"): c for c in status.get("conditions") or []}


def secret_facts(client: K8sClient, ns: str, secret_name: t.Optional[str]) -> t.Optional[t.Dict[str, t.Any]]:
    """Serial, subject and issuer from the Secret cert-manager wrote, when it can be read."""
    if not secret_name:
        return None
    try:
        secret = client.get("v1", "secrets", secret_name, ns, missing_ok=True)
    except K8sForbidden:
        return None
    data = (secret or {}).get("data") or {}
    if not data.get("tls.crt"):
        return None
    try:
        leaf = load_certificates(base64.b64decode(data["tls.crt"]), "Secret %s/%s" % (ns, secret_name))[0]
    except RunbookError:
        return None
    return cert_facts(leaf)


def wait_for_reissue(ctx: SourceContext, timeout: int) -> None:
    """Wait until every Certificate this run set ``Issuing`` on is Ready with a later notAfter; one that
    is not within ``timeout`` is critical and fails the task (after every result is gathered)."""
    ledger = ctx.ledger
    deadline = time.monotonic() + timeout
    pending = list(ledger.pending)
    while pending:
        pending = [item for item in pending if not _reissued(ctx, item)]
        if not pending:
            return
        if time.monotonic() >= deadline:
            for item in pending:
                item.entry.msg += "; not re-issued within wait_timeout %ss" % timeout
                item.entry.severity = "critical"
                ledger.failures.append("%s was not Ready with a later notAfter within %ss"
                                       % (item.entry.obj, timeout))
            return
        time.sleep(1.0)


def _reissued(ctx: SourceContext, item: PendingIssue) -> bool:
    current = ctx.client().get(CM_API, "certificates", item.name, item.namespace) or {}
    status = current.get("status") or {}
    after = parse_time(status["notAfter"]) if status.get("notAfter") else None
    if (_conditions(status).get("Ready") or {}).get("status") != "True" or after is None \
            or after <= item.not_after_before:
        return False
    entry = item.entry
    entry.msg += "; re-issued: Ready, valid until %s" % isoformat(after)
    entry.new = {"serial": None, "not_before": status.get("notBefore"), "not_after": isoformat(after),
                 "issuer": entry.facts.get("issuer")}
    entry.severity = "info"
    facts = secret_facts(ctx.client(), item.namespace, item.secret_name)
    if facts and facts.get("serial"):
        entry.new["serial"] = facts["serial"]
        entry.new["issuer"] = facts["issuer"]
    if item.secret_name:
        ctx.ledger.renewed_secret(item.namespace, item.secret_name)
    return True


# ----------------------------------------------------------------------------------------------
# Live TLS endpoints (report only)


class EndpointSource:
    def __init__(self, options: SourceOptions, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx

    def read(self) -> t.Iterator[Current]:
        host, port, server_name = self.options.host or "", self.options.port, self.options.server_name
        obj = "Endpoint/%s:%d" % (host, port) + ("/" + server_name if server_name else "")
        try:
            leaf = fetch_endpoint_certificate(host, port, server_name, self.ctx.connect_timeout)
        except RunbookError as exc:
            self.ctx.ledger.unreadable(obj, "endpoint", exc, "critical")
            return
        yield _readable(Entry("endpoint", obj), leaf)

    def renew(self, current: Current) -> None:
        current.entry.msg += "; report only: renew it where it is issued"


def fetch_endpoint_certificate(host: str, port: int, server_name: t.Optional[str], timeout: float) -> "x509.Certificate":
    """The leaf certificate a TLS endpoint presents (not verified: this is a report of what is served)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sni = server_name or (None if _is_ip(host) else host)
    where = "%s:%d" % (host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise RunbookError("TLS endpoint %s: cannot connect: no answer within connect_timeout %ss" % (where, timeout))
    except OSError as exc:
        raise RunbookError("TLS endpoint %s: cannot connect: %s" % (where, (exc.strerror or str(exc)).lower()))
    except (ValueError, UnicodeError) as exc:  # a host name the resolver refuses (too long, bad IDNA)
        raise RunbookError("TLS endpoint %s: host %s is not a valid host name: %s" % (where, shown(host), exc))
    try:
        with tls_handshake(sock, context, sni, "TLS endpoint %s" % where) as tls:
            der = tls.getpeercert(binary_form=True)
    except RunbookError:
        raise
    except (ValueError, UnicodeError) as exc:  # a server_name ssl refuses
        sock.close()
        raise RunbookError("TLS endpoint %s: server_name %s cannot be sent: %s" % (where, shown(sni), exc))
    except OSError as exc:
        raise RunbookError("TLS endpoint %s: the connection failed during the TLS handshake: %s"
                           % (where, (exc.strerror or str(exc)).lower()))
    if not der:
        raise RunbookError("TLS endpoint %s presented no certificate" % where)
    try:
        cert = x509.load_der_x509_certificate(der)
        cert_facts(cert)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RunbookError("TLS endpoint %s presented a certificate that cannot be read: %s" % (where, exc))
    return cert


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            continue
    return False


# ----------------------------------------------------------------------------------------------
# PEM files on the managed host


class FileSource:
    def __init__(self, options: SourceOptions, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx

    @property
    def path(self) -> str:
        return os.path.expanduser(self.options.path or "")

    def read(self) -> t.Iterator[Current]:
        path = self.path
        obj = "File" + (path if path.startswith("/") else "/" + path)
        try:
            chain = load_certificates(read_pem_file(path), path)
        except RunbookError as exc:
            self.ctx.ledger.unreadable(obj, "file", exc)
            return
        yield _readable(Entry("file", obj), chain[0])

    def renew(self, current: Current) -> None:
        entry, leaf, ledger = current.entry, current.leaf, self.ctx.ledger
        if leaf is None:
            raise AssertionError("a readable file has its certificate")
        if not self.ctx.can_issue(entry) or self.ctx.issuer is None:
            return
        if not self.options.key_path:
            entry.msg += "; not renewed: the source has no key_path to write the new private key to"
            ledger.failures.append("renew %s: set key_path on the file source so the new private key can be written"
                                   % entry.obj)
            return
        key_path = os.path.expanduser(self.options.key_path)
        ca_path = os.path.expanduser(self.options.ca_path) if self.options.ca_path else None
        old_key = None
        if os.path.lexists(key_path):
            try:
                old_key = read_pem_file(key_path, "key_path")
            except RunbookError as exc:
                ledger.renewal_failed(entry, RunbookError("renew %s: %s; nothing was written" % (entry.obj, exc.msg)))
                return
        reuse = bool(self.ctx.key_policy.reuse_key and old_key)
        # Checked in check mode too, so that it says what the real run would do.
        destinations = ([] if reuse else [("key_path", key_path)]) + [("path", self.path)] + (
            [("ca_path", ca_path)] if ca_path else [])
        for option, destination in destinations:
            problem = unwritable(destination)
            if problem:
                ledger.renewal_failed(entry, RunbookError("renew %s: cannot write %s %s: %s; nothing was written"
                                                          % (entry.obj, option, destination, problem)))
                return
        try:
            new = renew_certificate(self.ctx.issuer, self.ctx.key_policy, obj=entry.obj, leaf=leaf,
                                    old_key_pem=old_key, key_what=key_path)
        except RunbookError as exc:
            ledger.renewal_failed(entry, exc)
            return
        self.ctx.issued(entry, new.cert)
        if self.ctx.check_mode:
            return
        files: t.List[FileWrite] = [] if reuse else [(key_path, key_pem(new.key), 0o600)]
        files.append((self.path, cert_pem(new.cert) + (b"" if ca_path else new.ca_pem), None))
        if ca_path:
            files.append((ca_path, new.ca_pem, None))
        try:
            write_together(files)
        except RunbookError as exc:
            ledger.renewal_failed(entry, RunbookError("renew %s: %s" % (entry.obj, exc.msg)))


SOURCES: t.Dict[str, t.Callable[[SourceOptions, SourceContext], CertificateSource]] = {
    "tls_secret": TlsSecretSource, "certificate": CertManagerSource, "endpoint": EndpointSource, "file": FileSource,
}
