# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading and describing X.509 certificates and private keys (PEM, through ``cryptography``).

What every certificate source and the issuer share: loading a PEM bundle or key (with messages that
name the option and never show key material), reading a PEM file safely (a regular file of bounded
size, never a FIFO or a device), and the facts a result shows (subject, SANs, issuer, serial, dates).
"""

from __future__ import annotations

import datetime
import os
import stat
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, isoformat
from ansible_collections.runbook.ops.plugins.module_utils._names import local_path

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: t.Optional[str] = None
except ImportError as _exc:  # pragma: no cover - reported by run_cert_renew
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = str(_exc)

SigningKey = t.Union["ec.EllipticCurvePrivateKey", "rsa.RSAPrivateKey", "ed25519.Ed25519PrivateKey"]
"""The private keys that sign certificates here."""

CertFacts = t.Dict[str, t.Any]

PEM_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
# A PEM file (a chain, a key) is small; anything larger is not what was meant (/dev/zero, a disk image).
MAX_PEM_BYTES = 1024 * 1024


def require_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise RunbookError("the Python library cryptography is required on the managed host: %s"
                           % CRYPTOGRAPHY_IMPORT_ERROR)


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


def load_private_key(data: t.Union[bytes, str], what: str, passphrase: t.Optional[str] = None) -> SigningKey:
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
    """DER SubjectPublicKeyInfo of a public key (what two keys are compared by)."""
    return t.cast(bytes, key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def key_matches(private_key: SigningKey, cert: "x509.Certificate") -> bool:
    return public_bytes(private_key.public_key()) == public_bytes(cert.public_key())


def key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: "x509.Certificate") -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


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


def cert_facts(cert: "x509.Certificate") -> CertFacts:
    """What a result shows of a certificate: never key material."""
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
