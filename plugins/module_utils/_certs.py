# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Certificates near expiry, found and renewed: the logic behind ``runbook.ops.cert_renew``.

* Reading: PEM/x509 through ``cryptography``; kubernetes.io/tls Secrets, cert-manager Certificates
  (their status), live TLS endpoints (Python's ``ssl``, report only) and PEM files.
* Judging (pure, unit tested): days left and the fraction of the lifetime left, against ``now``.
* Renewing: a cert-manager Certificate gets the ``Issuing`` condition (what ``cmctl renew`` does) via
  the status subresource with the object's resourceVersion; a Secret or file gets a new certificate
  from a CA or self-signed issuer that keeps subject and SANs. The issuer is checked (key matches its
  certificate, it is a valid CA) before anything is read for renewal, and every new certificate is
  checked (key matches, signature verifies against the CA, dates valid) before it is written.
* Consumers: Deployments/StatefulSets whose pod template mounts or references a renewed Secret.
"""

from __future__ import annotations

import base64
import datetime
import os
import socket
import ssl
import stat
import tempfile
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    RunbookError, Stopwatch, isoformat, parse_time, tls_handshake, utcnow,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    k8s_name, local_path, no_control, number, shown,
)
from ansible_collections.runbook.ops.plugins.module_utils._findings import finding, sort_findings, summarize
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sConflict, K8sError, K8sForbidden, K8sNotFound, object_ref,
)

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: t.Optional[str] = None
except ImportError as _exc:  # pragma: no cover - reported by the module
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = str(_exc)

SOURCE_TYPES = ("tls_secret", "certificate", "endpoint", "file")
ISSUER_TYPES = ("ca", "selfsigned")
KEY_TYPES = ("ecdsa-p256", "rsa-2048", "rsa-3072", "ed25519")
CM_API = "cert-manager.io/v1"
CHECK = "certificates"
BACKDATE = datetime.timedelta(minutes=5)
SECRET_TLS = "kubernetes.io/tls"
PEM_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
# A PEM file (a chain, a key) is small; anything larger is not what was meant (/dev/zero, a disk image).
MAX_PEM_BYTES = 1024 * 1024
MAX_DAYS = 36500
MAX_WAIT = 86400
MAX_CONNECT_TIMEOUT = 3600


# ----------------------------------------------------------------------------------------------
# PEM and x509


def load_certificates(data: t.Union[bytes, str], what: str) -> t.List["x509.Certificate"]:
    """Every certificate of a PEM bundle (the first is the leaf); RunbookError when there is none."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if PEM_CERT_MARKER not in data:
        raise RunbookError("%s holds no PEM certificate" % what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RunbookError("%s: cannot parse the PEM certificate: %s" % (what, exc))
    for cert in certs:
        try:
            cert_facts(cert)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise RunbookError("%s: the certificate cannot be read (malformed name or extension: %s)" % (what, exc))
    return certs


def load_private_key(data: t.Union[bytes, str], what: str, passphrase: t.Optional[str] = None) -> t.Any:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    try:
        password = passphrase.encode("utf-8", "surrogateescape") if passphrase else None
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        # Encrypted without a passphrase, or a passphrase for an unencrypted key.
        raise RunbookError("%s: %s" % (what, "the key is encrypted and no passphrase was given"
                                       if "encrypted" in str(exc).lower() and not passphrase
                                       else "a passphrase was given but the key is not encrypted"))
    except (ValueError, UnicodeError):
        raise RunbookError("%s is not a readable PEM private key (or the passphrase is wrong)" % what)
    except UnsupportedAlgorithm as exc:
        raise RunbookError("%s is a private key of a type that cannot be used: %s" % (what, exc))
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise RunbookError("%s is a %s key; only RSA, ECDSA and Ed25519 keys sign certificates here"
                           % (what, type(key).__name__.replace("_", "").replace("PrivateKey", "") or "unknown"))
    return key


def read_pem_file(path: str, what: t.Optional[str] = None) -> bytes:
    """The content of a PEM file: a regular file (never a FIFO or a device, which could block or never end)
    of at most ``MAX_PEM_BYTES``. RunbookError names ``what`` (the option, when given), the path and the cause."""
    def fail(text: str) -> RunbookError:
        return RunbookError("%s: %s" % (what, text) if what else text)

    local_path(what or "path", path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise fail("cannot read %s: %s" % (path, exc.strerror or exc))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail("cannot read %s: it is not a regular file" % path)
        if info.st_size > MAX_PEM_BYTES:
            raise fail("cannot read %s: it is %d bytes, larger than any PEM file (at most %d); is it the right file?"
                       % (path, info.st_size, MAX_PEM_BYTES))
        chunks: t.List[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_PEM_BYTES:
                raise fail("cannot read %s: it is larger than any PEM file (at most %d bytes)" % (path, MAX_PEM_BYTES))
        return b"".join(chunks)
    except OSError as exc:
        raise fail("cannot read %s: %s" % (path, exc.strerror or exc))
    finally:
        os.close(fd)


def text_or_file(value: str, what: str, secret: bool = False) -> bytes:
    """PEM text as is, or the content of the file it names. With ``secret`` (a key given inline by
    mistake without its PEM header), no message shows a part of the value."""
    if not isinstance(value, str):
        raise RunbookError("%s must be PEM text or a file path, not %s" % (what, type(value).__name__))
    if "-----BEGIN" in value:
        return value.encode("utf-8", "surrogateescape")
    try:
        local_path(what, value)
    except RunbookError as exc:
        if secret:
            raise RunbookError("%s holds no PEM text (no -----BEGIN line) and is no usable file path either (empty, "
                               "too long, or with a control character)" % what)
        raise RunbookError("%s holds no PEM text (no -----BEGIN line), so it is read as a file path: %s" % (what, exc.msg))
    return read_pem_file(os.path.expanduser(value), what)


def public_bytes(key: t.Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(private_key: t.Any, cert: "x509.Certificate") -> bool:
    return public_bytes(private_key.public_key()) == public_bytes(cert.public_key())


def not_before(cert: "x509.Certificate") -> datetime.datetime:
    return cert.not_valid_before_utc


def not_after(cert: "x509.Certificate") -> datetime.datetime:
    return cert.not_valid_after_utc


def sans_of(cert: "x509.Certificate") -> t.List[str]:
    """``DNS:name``, ``IP:address``, ``URI:...``, ``email:...`` as openssl prints them."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: t.List[str] = []
    for general in ext:
        if isinstance(general, x509.DNSName):
            names.append("DNS:" + general.value)
        elif isinstance(general, x509.IPAddress):
            names.append("IP:" + str(general.value))
        elif isinstance(general, x509.UniformResourceIdentifier):
            names.append("URI:" + general.value)
        elif isinstance(general, x509.RFC822Name):
            names.append("email:" + general.value)
        else:
            names.append(str(general.value))
    return names


def serial_hex(serial: int) -> str:
    text = "%x" % serial
    return text if len(text) % 2 == 0 else "0" + text


def cert_facts(cert: "x509.Certificate") -> dict:
    return {
        "subject": cert.subject.rfc4514_string(),
        "sans": sans_of(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert.serial_number),
        "not_before": isoformat(not_before(cert)),
        "not_after": isoformat(not_after(cert)),
    }


def is_ca(cert: "x509.Certificate") -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def signed_by(cert: "x509.Certificate", issuer: "x509.Certificate") -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Judging (pure)


def judge(not_before_: datetime.datetime, not_after_: datetime.datetime, now: datetime.datetime,
          remaining_days: float, remaining_percentage: t.Optional[float], force: bool = False) -> dict:
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


# ----------------------------------------------------------------------------------------------
# Issuing


def generate_key(key_type: str) -> t.Any:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise RunbookError("key_type %r is not one of %s" % (key_type, ", ".join(KEY_TYPES)))


def _hash_for(key: t.Any) -> t.Optional[t.Any]:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def key_pem(key: t.Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: "x509.Certificate") -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Issuer:
    """A CA (certificate + key) or self-signed issuing; checked when it is built."""

    def __init__(self, kind: str, ca_cert: t.Optional["x509.Certificate"] = None, ca_key: t.Any = None,
                 ca_chain_pem: bytes = b"") -> None:
        self.kind = kind
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self.ca_chain_pem = ca_chain_pem

    @classmethod
    def from_options(cls, options: t.Mapping[str, t.Any], now: t.Optional[datetime.datetime] = None) -> "Issuer":
        kind = options.get("type")
        if kind == "selfsigned":
            return cls("selfsigned")
        if kind != "ca":
            raise RunbookError("issuer.type %r is not one of %s" % (kind, ", ".join(ISSUER_TYPES)))
        if not options.get("ca_cert") or not options.get("ca_key"):
            raise RunbookError("issuer type ca needs ca_cert and ca_key (PEM text or a path)")
        chain_pem = text_or_file(options["ca_cert"], "issuer.ca_cert")
        certs = load_certificates(chain_pem, "issuer.ca_cert")
        ca_cert = certs[0]
        ca_key = load_private_key(text_or_file(options["ca_key"], "issuer.ca_key", secret=True), "issuer.ca_key",
                                  options.get("ca_key_passphrase"))
        subject = ca_cert.subject.rfc4514_string()
        if not key_matches(ca_key, ca_cert):
            raise RunbookError("issuer refused: issuer.ca_key does not match the public key of issuer.ca_cert (%s); "
                               "nothing was renewed or written" % subject)
        if not is_ca(ca_cert):
            raise RunbookError("issuer refused: issuer.ca_cert (%s) is not a CA certificate (basicConstraints CA:TRUE "
                               "missing); nothing was renewed or written" % subject)
        moment = now or utcnow()
        if not (not_before(ca_cert) <= moment < not_after(ca_cert)):
            valid = (isoformat(not_before(ca_cert)), isoformat(not_after(ca_cert)))
            raise RunbookError("issuer refused: issuer.ca_cert (%s) is not valid now (valid %s to %s); nothing was "
                               "renewed or written" % ((subject,) + valid))
        return cls("ca", ca_cert, ca_key, chain_pem.strip() + b"\n")

    def issue(self, template: "x509.Certificate", key: t.Any, validity_days: int,
              now: t.Optional[datetime.datetime] = None) -> t.Tuple["x509.Certificate", bytes, t.List[str]]:
        """A new certificate for ``key`` with ``template``'s subject, SANs and usages, a new serial and
        ``validity_days`` of validity; returns ``(certificate, ca_pem, notes)``. Checked before it is
        returned (:func:`check_issued`)."""
        moment = (now or utcnow()).replace(microsecond=0)
        start = moment - BACKDATE
        end = moment + datetime.timedelta(days=validity_days)
        notes: t.List[str] = []
        if self.kind == "ca":
            if not (self.ca_cert is not None):
                raise AssertionError('expected self.ca_cert is not None')
            if end > not_after(self.ca_cert):
                end = not_after(self.ca_cert)
                notes.append("validity cut to the CA's expiry %s" % isoformat(end))
            issuer_name = self.ca_cert.subject
            signing_key = self.ca_key
            authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_cert.public_key())
        else:
            issuer_name = template.subject
            signing_key = key
            authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        builder = (x509.CertificateBuilder()
                   .subject_name(template.subject)
                   .issuer_name(issuer_name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start)
                   .not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(authority, critical=False))
        rsa_key = isinstance(key, rsa.RSAPrivateKey)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=rsa_key, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        for ext_class in (x509.SubjectAlternativeName, x509.ExtendedKeyUsage):
            try:
                ext = template.extensions.get_extension_for_class(ext_class)
            except x509.ExtensionNotFound:
                if ext_class is x509.ExtendedKeyUsage:
                    builder = builder.add_extension(x509.ExtendedKeyUsage(
                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                continue
            builder = builder.add_extension(ext.value, critical=ext.critical)
        cert = builder.sign(signing_key, _hash_for(signing_key))
        ca_pem = self.ca_chain_pem if self.kind == "ca" else cert_pem(cert)
        check_issued(cert, key, self.ca_cert if self.kind == "ca" else cert, template, now=moment)
        return cert, ca_pem, notes


def check_issued(cert: "x509.Certificate", key: t.Any, ca_cert: "x509.Certificate",
                 template: t.Optional["x509.Certificate"] = None, now: t.Optional[datetime.datetime] = None) -> None:
    """Refuse a certificate that should not be written: key mismatch, a signature the CA does not
    verify, dates not valid now, or a subject/SAN that differs from the one it replaces."""
    subject = cert.subject.rfc4514_string()
    if not key_matches(key, cert):
        raise RunbookError("new certificate for %s refused: its public key does not match the private key" % subject)
    if cert.issuer != ca_cert.subject or not signed_by(cert, ca_cert):
        raise RunbookError("new certificate for %s refused: its signature does not verify with the CA %s"
                           % (subject, ca_cert.subject.rfc4514_string()))
    moment = now or utcnow()
    if not (not_before(cert) <= moment < not_after(cert)):
        raise RunbookError("new certificate for %s refused: not valid now (valid %s to %s)"
                           % (subject, isoformat(not_before(cert)), isoformat(not_after(cert))))
    if template is not None and (cert.subject != template.subject or sans_of(cert) != sans_of(template)):
        raise RunbookError("new certificate for %s refused: subject or SANs differ from the certificate it replaces"
                           % subject)


# ----------------------------------------------------------------------------------------------
# Live endpoints


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


WORKLOADS = (("apps/v1", "deployments", "Deployment"), ("apps/v1", "statefulsets", "StatefulSet"))


# ----------------------------------------------------------------------------------------------
# The run


class Entry:
    """One certificate seen: its facts, the judgement and what was done."""

    def __init__(self, source: str, obj: str) -> None:
        self.source = source
        self.obj = obj
        self.facts: dict = {k: None for k in ("subject", "sans", "issuer", "serial", "not_before", "not_after")}
        self.facts["sans"] = []
        self.days_left: t.Optional[float] = None
        self.should_renew = False
        self.renewed = False
        self.msg = ""
        self.severity = "ok"
        self.details: dict = {}
        self.new: t.Optional[dict] = None

    def result(self) -> dict:
        out = {"source": self.source, "object": self.obj}
        out.update(self.facts)
        out.update({"days_left": self.days_left, "should_renew": self.should_renew, "renewed": self.renewed,
                    "msg": self.msg, "new": self.new})
        return out

    def finding(self) -> dict:
        details = dict(self.details)
        details.update({"days_left": self.days_left, "not_after": self.facts.get("not_after"),
                        "should_renew": self.should_renew, "renewed": self.renewed})
        return finding(self.severity, CHECK, self.obj, "%s: %s" % (self.obj, self.msg), details)


class Renewer:
    """Runs one ``cert_renew`` task; ``client`` is None when no source needs Kubernetes."""

    def __init__(self, params: t.Mapping[str, t.Any], client: t.Optional[K8sClient], check_mode: bool,
                 diff: bool = False) -> None:
        self.params = params
        self.client = client
        self.check_mode = check_mode
        self.want_diff = diff
        if params.get("now"):
            no_control("now", params["now"])
        self.now = parse_time(params.get("now"), "now")
        self.remaining_days = number("remaining_days", params.get("remaining_days")
                                     if params.get("remaining_days") is not None else 30, 0, MAX_DAYS)
        pct = params.get("remaining_percentage")
        if pct is not None and not 0 < number("remaining_percentage", pct) < 1:
            raise RunbookError("remaining_percentage must be a fraction of the lifetime between 0 and 1 "
                               "(for example 0.33), not %s" % pct)
        self.remaining_percentage = None if pct is None else float(pct)
        self.force = bool(params.get("force"))
        validity = params.get("validity_days")
        number("validity_days", 90 if validity is None else validity, 1, MAX_DAYS)
        for option, high in (("wait_timeout", MAX_WAIT), ("connect_timeout", MAX_CONNECT_TIMEOUT)):
            if params.get(option) is not None:
                number(option, params[option], 0, high, above=True)
        self.issuer: t.Optional[Issuer] = None
        self.entries: t.List[Entry] = []
        self.extra_findings: t.List[dict] = []
        self.renewed_secrets: t.Dict[str, t.Set[str]] = {}
        self.consumers: t.List[dict] = []
        self.diffs: t.List[dict] = []
        self.warnings: t.List[str] = []
        self.fail_msgs: t.List[str] = []
        self.pending_waits: t.List[t.Tuple[Entry, str, str, str, datetime.datetime]] = []

    # -- setup ----------------------------------------------------------------------------------

    def validate_sources(self) -> t.List[dict]:
        sources = list(self.params.get("sources") or [])
        if not sources:
            raise RunbookError("sources is empty: give at least one tls_secret, certificate, endpoint or file source")
        for index, src in enumerate(sources):
            kind = src.get("type")
            where = "sources[%d] (type %s)" % (index, kind)
            _check_source_values(src, "sources[%d]" % index)
            if kind in ("tls_secret", "certificate"):
                if src.get("name") and (src.get("label_selector") or src.get("all")):
                    raise RunbookError("%s: name is mutually exclusive with label_selector and all" % where)
                if kind == "tls_secret" and src.get("all"):
                    raise RunbookError("%s: use label_selector to select several Secrets (all is for certificate)"
                                       % where)
                if kind == "certificate" and src.get("label_selector"):
                    raise RunbookError("%s: use name or all: true (label_selector is for tls_secret)" % where)
                if not (src.get("name") or src.get("label_selector") or src.get("all")):
                    wanted = "label_selector" if kind == "tls_secret" else "all: true"
                    raise RunbookError("%s needs name or %s" % (where, wanted))
                if not src.get("namespace") and not (kind == "certificate" and src.get("all")):
                    raise RunbookError("%s needs namespace" % where)
                if self.client is None:
                    raise RunbookError("%s needs the Kubernetes API (internal error: no client)" % where)
            elif kind == "endpoint":
                if not src.get("host"):
                    raise RunbookError("%s needs host" % where)
            elif kind == "file":
                if not src.get("path"):
                    raise RunbookError("%s needs path" % where)
            else:
                raise RunbookError("%s: type must be one of %s" % (where, ", ".join(SOURCE_TYPES)))
        return sources

    def run(self) -> dict:
        watch = Stopwatch()
        sources = self.validate_sources()
        # The issuer is loaded and checked first: a bad issuer refuses the run before anything is written.
        if self.params.get("issuer"):
            self.issuer = Issuer.from_options(self.params["issuer"])
        for src in sources:
            handler = getattr(self, "_source_" + src["type"])
            handler(src)
        self._wait_for_issuing()
        if self.params.get("restart_consumers") or self.renewed_secrets:
            self._consumers()
        findings = sort_findings([e.finding() for e in self.entries] + self.extra_findings)
        status, summary = summarize(findings)
        renewed = sum(1 for e in self.entries if e.renewed)
        restarted = sum(1 for c in self.consumers if c["restarted"])
        result: dict = {
            "changed": bool(renewed or restarted),
            "certificates": [e.result() for e in self.entries],
            "renewed": renewed,
            "consumers": self.consumers,
            "findings": findings,
            "status": status,
            "summary": summary,
            "checked_at": isoformat(self.now),
            "duration_s": watch.elapsed,
        }
        if self.client is not None:
            result["api_requests"] = self.client.requests
        if self.want_diff and self.diffs:
            result["diff"] = {"before": {d["object"]: d["before"] for d in self.diffs},
                              "after": {d["object"]: d["after"] for d in self.diffs}}
        if self.warnings:
            result["warnings"] = self.warnings
        if self.fail_msgs:
            result["_fail_msg"] = "; ".join(self.fail_msgs)
        return result

    def _assess(self, entry: "Entry", leaf: t.Any) -> bool:
        """Record the certificate's facts and verdict; True when it is due and an issuer can renew it."""
        entry.facts.update(cert_facts(leaf))
        self._judge(entry, not_before(leaf), not_after(leaf))
        self.entries.append(entry)
        if not entry.should_renew:
            return False
        if self.issuer is None:
            entry.msg += "; not renewed: no issuer given"
            return False
        return True

    def _judge(self, entry: Entry, start: datetime.datetime, end: datetime.datetime) -> None:
        verdict = judge(start, end, self.now, self.remaining_days, self.remaining_percentage, self.force)
        entry.days_left = verdict["days_left"]
        entry.should_renew = verdict["should_renew"]
        entry.severity = verdict["severity"]
        entry.msg = verdict["msg"]
        entry.details["lifetime_left"] = verdict["lifetime_left"]

    def _unreadable(self, obj: str, source: str, exc: RunbookError, severity: t.Optional[str] = None) -> None:
        entry = Entry(source, obj)
        if severity is None:
            severity = "unknown" if isinstance(exc, K8sForbidden) else "critical"
        entry.severity = severity
        entry.msg = "could not be checked: %s" % exc.msg if severity == "unknown" else exc.msg
        if isinstance(exc, K8sError):
            entry.details["status"] = exc.status
        self.entries.append(entry)

    # -- Secrets --------------------------------------------------------------------------------

    def _source_tls_secret(self, src: dict) -> None:
        if not (self.client is not None):
            raise AssertionError('expected self.client is not None')
        ns = src["namespace"]
        if src.get("name"):
            obj = object_ref("Secret", src["name"], ns)
            try:
                secrets = [self.client.get("v1", "secrets", src["name"], ns)]
            except (K8sForbidden, K8sNotFound) as exc:
                self._unreadable(obj, "tls_secret", exc)
                return
        else:
            try:
                secrets = self.client.list("v1", "secrets", ns, label_selector=src["label_selector"],
                                           field_selector="type=%s" % SECRET_TLS)
            except (K8sForbidden, K8sNotFound) as exc:
                self._unreadable(object_ref("Secret", "*", ns), "tls_secret", exc,
                                 "unknown" if isinstance(exc, K8sForbidden) else "warning")
                return
            except K8sError as exc:
                if exc.status == 400:
                    raise RunbookError("label_selector %s (Secrets in namespace %s) is refused by the API server as "
                                       "a label selector: %s" % (shown(src["label_selector"]), ns,
                                                                 exc.api_message or exc.msg))
                raise
            if not secrets:
                self.extra_findings.append(finding(
                    "warning", CHECK, object_ref("Secret", "*", ns),
                    "no %s Secret in namespace %s matches %s" % (SECRET_TLS, ns, src["label_selector"]),
                    {"label_selector": src["label_selector"]}))
        for secret in secrets:
            if not (secret is not None):
                raise AssertionError('expected secret is not None')
            self._secret(secret)

    def _secret(self, secret: dict) -> None:
        meta = secret["metadata"]
        obj = object_ref("Secret", meta["name"], meta.get("namespace"))
        entry = Entry("tls_secret", obj)
        data = secret.get("data") or {}
        try:
            if secret.get("type") != SECRET_TLS and "tls.crt" not in data:
                raise RunbookError("%s is of type %s and has no tls.crt" % (obj, secret.get("type")))
            if "tls.crt" not in data:
                raise RunbookError("%s has no tls.crt" % obj)
            chain = load_certificates(base64.b64decode(data["tls.crt"]), "%s tls.crt" % obj)
        except RunbookError as exc:
            self._unreadable(obj, "tls_secret", exc)
            return
        leaf = chain[0]
        if not self._assess(entry, leaf):
            return
        old_key_pem = base64.b64decode(data["tls.key"]) if data.get("tls.key") else None
        try:
            cert, key, ca_pem = self._issue(entry, leaf, old_key_pem, "%s tls.key" % obj)
        except RunbookError as exc:
            self._renewal_failed(entry, exc)
            return
        new_data = dict(data)
        new_data["tls.crt"] = base64.b64encode(cert_pem(cert)).decode()
        new_data["tls.key"] = base64.b64encode(key_pem(key)).decode()
        new_data["ca.crt"] = base64.b64encode(ca_pem).decode()
        self._record(entry, cert)
        if not self.check_mode:
            body = dict(secret)
            body["data"] = new_data
            body.pop("stringData", None)
            try:
                self.client.replace("v1", "secrets", body)  # type: ignore[union-attr]
            except K8sConflict:
                self._renewal_failed(entry, RunbookError(
                    "renew %s: the Secret changed since it was read (resourceVersion %s); nothing was written for "
                    "it; run again to judge the current certificate" % (obj, meta.get("resourceVersion"))))
                return
            except (K8sForbidden, K8sNotFound) as exc:
                self._renewal_failed(entry, RunbookError("renew %s: %s; nothing was written for it" % (obj, exc.msg)))
                return
        self.renewed_secrets.setdefault(meta.get("namespace", ""), set()).add(meta["name"])

    def _renewal_failed(self, entry: Entry, exc: RunbookError) -> None:
        """Keep going with the other sources; the task fails at the end with every result returned."""
        entry.renewed = False
        entry.new = None
        entry.severity = "critical"
        entry.msg += "; renewal failed: %s" % exc.msg
        if self.diffs and self.diffs[-1]["object"] == entry.obj:
            self.diffs.pop()
        self.fail_msgs.append(exc.msg)

    def _issue(self, entry: Entry, leaf: "x509.Certificate", old_key_pem: t.Optional[bytes],
               what: str) -> t.Tuple["x509.Certificate", t.Any, bytes]:
        if not (self.issuer is not None):
            raise AssertionError('expected self.issuer is not None')
        if self.params.get("reuse_key"):
            if not old_key_pem:
                raise RunbookError("renew %s: reuse_key is set but there is no existing private key (%s)"
                                   % (entry.obj, what))
            key = load_private_key(old_key_pem, what)
            if not key_matches(key, leaf):
                raise RunbookError("renew %s: reuse_key is set but the existing private key (%s) does not match "
                                   "the certificate; nothing was written" % (entry.obj, what))
        else:
            key = generate_key(self.params.get("key_type") or "ecdsa-p256")
        try:
            cert, ca_pem, notes = self.issuer.issue(leaf, key, int(self.params.get("validity_days") or 90))
        except RunbookError as exc:
            raise RunbookError("renew %s: %s; nothing was written" % (entry.obj, exc.msg))
        if notes:
            entry.msg += " (%s)" % "; ".join(notes)
        return cert, key, ca_pem

    def _record(self, entry: Entry, cert: "x509.Certificate") -> None:
        facts = cert_facts(cert)
        entry.renewed = True
        entry.new = {k: facts[k] for k in ("serial", "not_before", "not_after", "issuer")}
        verb = "would renew" if self.check_mode else "renewed"
        entry.msg += "; %s by the %s issuer: new certificate valid until %s" % (
            verb, self.issuer.kind if self.issuer else "", facts["not_after"])
        if self.check_mode:
            entry.new = None
        else:
            entry.severity = "info"
        self.diffs.append({"object": entry.obj,
                           "before": {k: entry.facts[k] for k in ("serial", "issuer", "not_after")},
                           "after": {"serial": "(new)" if self.check_mode else facts["serial"],
                                     "issuer": facts["issuer"], "not_after": facts["not_after"]}})

    # -- files ----------------------------------------------------------------------------------

    def _source_file(self, src: dict) -> None:
        path = os.path.expanduser(src["path"])
        obj = "File" + (path if path.startswith("/") else "/" + path)
        entry = Entry("file", obj)
        try:
            chain = load_certificates(read_pem_file(path), path)
        except RunbookError as exc:
            self._unreadable(obj, "file", exc)
            return
        leaf = chain[0]
        if not self._assess(entry, leaf):
            return
        key_path = src.get("key_path")
        if not key_path:
            entry.msg += "; not renewed: the source has no key_path to write the new private key to"
            self.fail_msgs.append("renew %s: set key_path on the file source so the new private key can be written"
                                  % obj)
            return
        key_path = os.path.expanduser(key_path)
        ca_path = os.path.expanduser(src["ca_path"]) if src.get("ca_path") else None
        old_key = None
        if os.path.lexists(key_path):
            try:
                old_key = read_pem_file(key_path, "key_path")
            except RunbookError as exc:
                self._renewal_failed(entry, RunbookError("renew %s: %s; nothing was written" % (obj, exc.msg)))
                return
        reuse = bool(self.params.get("reuse_key") and old_key)
        # Checked in check mode too, so that it says what the real run would do.
        destinations = ([] if reuse else [("key_path", key_path)]) + [("path", path)] + (
            [("ca_path", ca_path)] if ca_path else [])
        for option, destination in destinations:
            problem = unwritable(destination)
            if problem:
                self._renewal_failed(entry, RunbookError("renew %s: cannot write %s %s: %s; nothing was written"
                                                         % (obj, option, destination, problem)))
                return
        try:
            cert, key, ca_pem = self._issue(entry, leaf, old_key, key_path)
        except RunbookError as exc:
            self._renewal_failed(entry, exc)
            return
        self._record(entry, cert)
        if self.check_mode:
            return
        bundle = cert_pem(cert) + (b"" if ca_path else ca_pem)
        files = ([] if reuse else [(key_path, key_pem(key), 0o600)]) + [(path, bundle, None)]
        if ca_path:
            files.append((ca_path, ca_pem, None))
        try:
            write_together(files)
        except RunbookError as exc:
            self._renewal_failed(entry, RunbookError("renew %s: %s" % (obj, exc.msg)))

    # -- endpoints ------------------------------------------------------------------------------

    def _source_endpoint(self, src: dict) -> None:
        host, port = src["host"], int(src.get("port") or 443)
        obj = "Endpoint/%s:%d" % (host, port)
        if src.get("server_name"):
            obj += "/" + src["server_name"]
        entry = Entry("endpoint", obj)
        try:
            leaf = fetch_endpoint_certificate(host, port, src.get("server_name"),
                                              float(self.params.get("connect_timeout") or 10))
        except RunbookError as exc:
            self._unreadable(obj, "endpoint", exc, "critical")
            return
        entry.facts.update(cert_facts(leaf))
        self._judge(entry, not_before(leaf), not_after(leaf))
        if entry.should_renew:
            entry.msg += "; report only: renew it where it is issued"
        self.entries.append(entry)

    # -- cert-manager ---------------------------------------------------------------------------

    def _source_certificate(self, src: dict) -> None:
        if not (self.client is not None):
            raise AssertionError('expected self.client is not None')
        ns = src.get("namespace")
        if src.get("name"):
            obj = object_ref("Certificate", src["name"], ns)
            try:
                certs = [self.client.get(CM_API, "certificates", src["name"], ns)]
            except (K8sForbidden, K8sNotFound) as exc:
                self._unreadable(obj, "certificate", exc)
                return
        else:
            try:
                certs = self.client.list(CM_API, "certificates", ns)
            except (K8sForbidden, K8sNotFound) as exc:
                self._unreadable(object_ref("Certificate", "*", ns), "certificate", exc,
                                 "unknown" if isinstance(exc, K8sForbidden) else "warning")
                return
        for cert in certs:
            if not (cert is not None):
                raise AssertionError('expected cert is not None')
            self._certificate(cert)

    def _certificate(self, cert: dict) -> None:
        meta, spec, status = cert["metadata"], cert.get("spec") or {}, cert.get("status") or {}
        ns, name = meta.get("namespace", ""), meta["name"]
        obj = object_ref("Certificate", name, ns)
        entry = Entry("certificate", obj)
        sans = (["DNS:" + d for d in spec.get("dnsNames") or []] + ["IP:" + i for i in spec.get("ipAddresses") or []]
                + ["URI:" + u for u in spec.get("uris") or []] + ["email:" + e for e in spec.get("emailAddresses") or []])
        ref = spec.get("issuerRef") or {}
        entry.facts.update({"subject": ("CN=" + spec["commonName"]) if spec.get("commonName") else "",
                            "sans": sans, "issuer": "%s/%s" % (ref.get("kind", "Issuer"), ref.get("name", "")),
                            "not_before": status.get("notBefore"), "not_after": status.get("notAfter")})
        entry.details.update({"namespace": ns, "secret": spec.get("secretName")})
        self._secret_facts(entry, ns, spec.get("secretName"))
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        ready = conditions.get("Ready") or {}
        issuing = conditions.get("Issuing") or {}
        self.entries.append(entry)
        if status.get("notAfter"):
            end = parse_time(status["notAfter"], "%s status.notAfter" % obj)
            start = parse_time(status["notBefore"], "%s status.notBefore" % obj) if status.get("notBefore") \
                else end - datetime.timedelta(days=90)
            self._judge(entry, start, end)
        else:
            entry.msg = "not issued yet (no status.notAfter)"
            entry.severity = "critical"
            entry.should_renew = self.force
        if ready.get("status") != "True":
            entry.severity = "critical"
            entry.msg += "; not Ready (%s: %s)" % (ready.get("reason", "no Ready condition"),
                                                   ready.get("message", "")) if ready else "; no Ready condition"
        if not entry.should_renew:
            return
        if issuing.get("status") == "True":
            entry.msg += "; already issuing (%s), nothing to do" % issuing.get("reason", "Issuing")
            entry.details["issuing"] = True
            return
        changed = self._trigger(obj, name, ns)
        if not changed:
            entry.msg += "; already issuing, nothing to do"
            entry.details["issuing"] = True
            return
        entry.renewed = True
        entry.details["issuing"] = True
        self.diffs.append({"object": obj, "before": {"Issuing": issuing.get("status", "absent")},
                           "after": {"Issuing": "True (ManuallyTriggered)"}})
        if self.check_mode:
            entry.msg += "; would set Issuing to trigger cert-manager (check mode)"
            return
        entry.msg += "; Issuing set: cert-manager re-issues it"
        if entry.severity != "critical":
            entry.severity = "info"
        if self.params.get("wait"):
            before = parse_time(status["notAfter"]) if status.get("notAfter") else datetime.datetime.min.replace(
                tzinfo=datetime.timezone.utc)
            self.pending_waits.append((entry, name, ns, spec.get("secretName") or "", before))

    def _secret_facts(self, entry: Entry, ns: str, secret_name: t.Optional[str]) -> None:
        """Serial, subject and issuer from the Secret cert-manager wrote, when it can be read."""
        if not secret_name or self.client is None:
            return
        try:
            secret = self.client.get("v1", "secrets", secret_name, ns, missing_ok=True)
        except K8sForbidden:
            return
        data = (secret or {}).get("data") or {}
        if not data.get("tls.crt"):
            return
        try:
            leaf = load_certificates(base64.b64decode(data["tls.crt"]), "Secret %s/%s" % (ns, secret_name))[0]
        except RunbookError:
            return
        facts = cert_facts(leaf)
        entry.facts.update({k: facts[k] for k in ("subject", "sans", "issuer", "serial")})

    def _trigger(self, obj: str, name: str, ns: str) -> bool:
        """Set Issuing=True/ManuallyTriggered through the status subresource, with the read
        resourceVersion (a concurrent change is read again and judged again)."""
        if not (self.client is not None):
            raise AssertionError('expected self.client is not None')
        stamp = isoformat(utcnow())

        def mutate(current: dict) -> t.Optional[dict]:
            status = current.setdefault("status", {})
            conditions = status.setdefault("conditions", [])
            for cond in conditions:
                if cond.get("type") == "Issuing" and cond.get("status") == "True":
                    return None
            conditions[:] = [c for c in conditions if c.get("type") != "Issuing"]
            conditions.append({
                "type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
                "message": "Certificate re-issuance manually triggered by runbook.ops.cert_renew",
                "lastTransitionTime": stamp,
                "observedGeneration": (current.get("metadata") or {}).get("generation", 1),
            })
            return current

        if self.check_mode:
            current = self.client.get(CM_API, "certificates", name, ns)
            if not (current is not None):
                raise AssertionError('expected current is not None')
            return mutate(current) is not None
        changed, _before, _after = self.client.modify(CM_API, "certificates", name, mutate, ns, subresource="status")
        return changed

    def _wait_for_issuing(self) -> None:
        if not self.pending_waits:
            return
        if not (self.client is not None):
            raise AssertionError('expected self.client is not None')
        deadline = time.monotonic() + float(self.params.get("wait_timeout") or 300)
        pending = list(self.pending_waits)
        while pending:
            still = []
            for entry, name, ns, secret_name, before in pending:
                current = self.client.get(CM_API, "certificates", name, ns) or {}
                status = current.get("status") or {}
                conds = {c.get("type"): c for c in status.get("conditions") or []}
                after = parse_time(status["notAfter"]) if status.get("notAfter") else None
                if (conds.get("Ready") or {}).get("status") == "True" and after is not None and after > before:
                    entry.msg += "; re-issued: Ready, valid until %s" % isoformat(after)
                    entry.new = {"serial": None, "not_before": status.get("notBefore"),
                                 "not_after": isoformat(after), "issuer": entry.facts.get("issuer")}
                    entry.severity = "info"
                    self._secret_facts_new(entry, ns, secret_name)
                    if secret_name:
                        self.renewed_secrets.setdefault(ns, set()).add(secret_name)
                else:
                    still.append((entry, name, ns, secret_name, before))
            pending = still
            if not pending:
                return
            if time.monotonic() >= deadline:
                for entry, _name, _ns, _secret, _before in pending:
                    entry.msg += "; not re-issued within wait_timeout %ss" % self.params.get("wait_timeout")
                    entry.severity = "critical"
                    self.fail_msgs.append("%s was not Ready with a later notAfter within %ss"
                                          % (entry.obj, self.params.get("wait_timeout")))
                return
            time.sleep(1.0)

    def _secret_facts_new(self, entry: Entry, ns: str, secret_name: str) -> None:
        probe = Entry(entry.source, entry.obj)
        self._secret_facts(probe, ns, secret_name)
        if probe.facts.get("serial") and entry.new is not None:
            entry.new["serial"] = probe.facts["serial"]
            entry.new["issuer"] = probe.facts["issuer"]

    # -- consumers ------------------------------------------------------------------------------

    def _consumers(self) -> None:
        if not self.renewed_secrets or self.client is None:
            return
        restart = bool(self.params.get("restart_consumers"))
        stamp = isoformat(utcnow())
        for ns, secrets in sorted(self.renewed_secrets.items()):
            for api_version, plural, kind in WORKLOADS:
                try:
                    workloads = self.client.list(api_version, plural, ns)
                except (K8sForbidden, K8sNotFound) as exc:
                    self.extra_findings.append(finding(
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
                    item = {"kind": kind, "namespace": ns, "name": name, "secrets": used, "restarted": False}
                    if restart:
                        if not self.check_mode:
                            self.client.rollout_restart(api_version, plural, name, ns, at=stamp)
                        item["restarted"] = True
                    self.consumers.append(item)


def unwritable(path: str) -> t.Optional[str]:
    """Why ``path`` cannot be replaced by a file written next to it (None when it can): its directory is
    missing, not a directory, read-only (also for root, on a read-only file system) or not writable, or
    ``path`` itself is a directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a directory"
    if not os.path.isdir(directory):
        return "its directory %s does not exist" % directory
    if not os.access(directory, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return "its directory %s is %s" % (directory, "on a read-only file system" if read_only else "not writable")
    return None


def _stage(path: str, data: bytes, mode: t.Optional[int]) -> str:
    """Write ``data`` to a new temporary file next to ``path`` (flushed to disk); returns its name."""
    directory = os.path.dirname(os.path.abspath(path))
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = 0o644
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".cert_renew.")
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp
    except OSError as exc:
        if tmp is not None:
            _unlink(tmp)
        raise RunbookError("cannot write %s: %s" % (path, exc.strerror or exc))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path: str, data: bytes, mode: t.Optional[int]) -> None:
    """Write next to ``path`` and rename over it; keeps an existing file's mode unless ``mode`` is given."""
    write_together([(path, data, mode)])


def write_together(files: t.Sequence[t.Tuple[str, bytes, t.Optional[int]]]) -> None:
    """Replace several files (a key and its certificate) so that a failure leaves them all as they were.

    Every new file is written in full next to its destination first; a failure there (read-only or
    full file system) removes them and changes nothing. Only then are they renamed into place, in
    order; should a rename fail, the files already replaced get their old content back.
    """
    staged: t.List[t.Tuple[str, str]] = []
    try:
        for path, data, mode in files:
            staged.append((path, _stage(path, data, mode)))
    except RunbookError as exc:
        for _path, tmp in staged:
            _unlink(tmp)
        raise RunbookError("%s; nothing was written" % exc.msg)
    old: t.List[t.Tuple[str, t.Optional[bytes], int]] = []
    for path, _tmp in staged:
        try:
            with open(path, "rb") as handle:
                old.append((path, handle.read(), os.stat(path).st_mode & 0o777))
        except OSError:
            old.append((path, None, 0))
    done: t.List[int] = []
    for index, (path, tmp) in enumerate(staged):
        try:
            os.replace(tmp, path)
            done.append(index)
        except OSError as exc:
            for _path, later in staged[index:]:
                _unlink(later)
            problems = []
            for undo in reversed(done):
                old_path, content, old_mode = old[undo]
                try:
                    if content is None:
                        os.unlink(old_path)
                    else:
                        os.replace(_stage(old_path, content, old_mode), old_path)
                except (OSError, RunbookError) as inner:
                    problems.append("%s: %s" % (old_path, getattr(inner, "msg", None) or inner))
            raise RunbookError("cannot write %s: %s; %s" % (
                path, exc.strerror or exc, "the files written before it were put back" if not problems else
                "putting back the files written before it failed too (%s)" % "; ".join(problems)))


def _check_source_values(src: t.Mapping[str, t.Any], where: str) -> None:
    """The names, host, port and paths of one source, checked before anything is read."""
    if src.get("namespace"):
        k8s_name("%s.namespace" % where, src["namespace"], label=True)
    if src.get("name"):
        k8s_name("%s.name" % where, src["name"])
    if src.get("label_selector"):
        selector = no_control("%s.label_selector" % where, src["label_selector"])
        if len(selector) > 1024:
            raise RunbookError("%s.label_selector %s is longer than 1024 characters" % (where, shown(selector)))
    if src.get("host") is not None:
        host = no_control("%s.host" % where, src["host"])
        if not host.strip() or len(host) > 253 or host != host.strip():
            raise RunbookError("%s.host %s is not a host name or address (1 to 253 characters, no spaces around it)"
                               % (where, shown(host)))
    if src.get("type") == "endpoint" and src.get("port") is not None:
        port = number("%s.port" % where, src["port"], 1, 65535)
        if port != int(port):
            raise RunbookError("%s.port must be a whole number" % where)
    if src.get("server_name"):
        name = no_control("%s.server_name" % where, src["server_name"])
        if len(name) > 253 or " " in name:
            raise RunbookError("%s.server_name %s is not a TLS server name (at most 253 characters, no spaces)"
                               % (where, shown(name)))
    for option in ("path", "key_path", "ca_path"):
        if src.get(option) is not None:
            local_path("%s.%s" % (where, option), src[option])


def needs_kubernetes(params: t.Mapping[str, t.Any]) -> bool:
    return any((src or {}).get("type") in ("tls_secret", "certificate") for src in params.get("sources") or [])


def run_cert_renew(params: t.Mapping[str, t.Any], client: t.Optional[K8sClient], check_mode: bool,
                   diff: bool = False) -> dict:
    if not HAS_CRYPTOGRAPHY:
        raise RunbookError("the Python library cryptography is required on the managed host: %s"
                           % CRYPTOGRAPHY_IMPORT_ERROR)
    return Renewer(params, client, check_mode, diff).run()
