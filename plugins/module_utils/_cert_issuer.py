# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issuing certificates for ``cert_renew``: a CA (certificate and key, checked when loaded) or
self-signed, new keys, and the checks every new certificate passes before it is written.

A renewal keeps the subject, the SANs and the extended key usages of the certificate it replaces,
with a new serial and (unless the key is reused) a new key; validity is cut to the CA's own expiry.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, isoformat, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._cert_x509 import (
    SigningKey, cert_pem, is_ca, key_matches, load_certificates, load_private_key, not_after, not_before, sans_of,
    signed_by, text_or_file,
)

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID
except ImportError:  # pragma: no cover - reported by run_cert_renew (require_cryptography)
    pass

ISSUER_TYPES = ("ca", "selfsigned")
KEY_TYPES = ("ecdsa-p256", "rsa-2048", "rsa-3072", "ed25519")
# New certificates start a little in the past, so a verifier whose clock is behind accepts them.
BACKDATE = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class IssuerOptions:
    """The ``issuer`` option; the argument spec makes sure a ``ca`` issuer has ``ca_cert`` and ``ca_key``."""

    type: str
    ca_cert: t.Optional[str]
    ca_key: t.Optional[str]
    ca_key_passphrase: t.Optional[str]


@dataclasses.dataclass(frozen=True)
class NewCertificate:
    """What a renewal produced: the certificate, its key, the CA PEM stored beside it, and notes for people."""

    cert: "x509.Certificate"
    key: SigningKey
    ca_pem: bytes
    notes: t.List[str]


def generate_key(key_type: str) -> SigningKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError("unknown key type %r (the argument spec allows only %s)" % (key_type, ", ".join(KEY_TYPES)))


def _hash_for(key: SigningKey) -> t.Optional["hashes.SHA256"]:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


class Issuer:
    """A CA (certificate + key) or self-signed issuing; checked when it is built."""

    def __init__(self, kind: str, ca_cert: t.Optional["x509.Certificate"] = None,
                 ca_key: t.Optional[SigningKey] = None, ca_chain_pem: bytes = b"") -> None:
        self.kind = kind
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self.ca_chain_pem = ca_chain_pem

    @classmethod
    def from_options(cls, options: IssuerOptions, now: t.Optional[datetime.datetime] = None) -> "Issuer":
        """Load and check the issuer: its key matches its certificate, which is a CA valid now."""
        if options.type == "selfsigned":
            return cls("selfsigned")
        if options.ca_cert is None or options.ca_key is None:
            raise AssertionError("the argument spec requires ca_cert and ca_key for a ca issuer")
        chain_pem = text_or_file(options.ca_cert, "issuer.ca_cert")
        ca_cert = load_certificates(chain_pem, "issuer.ca_cert")[0]
        ca_key = load_private_key(text_or_file(options.ca_key, "issuer.ca_key", secret=True), "issuer.ca_key",
                                  options.ca_key_passphrase)
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

    def issue(self, template: "x509.Certificate", key: SigningKey, validity_days: int,
              now: t.Optional[datetime.datetime] = None) -> NewCertificate:
        """A new certificate for ``key`` with ``template``'s subject, SANs and usages, a new serial and
        ``validity_days`` of validity. Checked before it is returned (:func:`check_issued`)."""
        moment = (now or utcnow()).replace(microsecond=0)
        end = moment + datetime.timedelta(days=validity_days)
        notes: t.List[str] = []
        if self.ca_cert is not None and self.ca_key is not None:
            if end > not_after(self.ca_cert):
                end = not_after(self.ca_cert)
                notes.append("validity cut to the CA's expiry %s" % isoformat(end))
            issuer_name, signing_key, signer_cert = self.ca_cert.subject, self.ca_key, self.ca_cert
        else:
            issuer_name, signing_key, signer_cert = template.subject, key, None
        builder = (x509.CertificateBuilder()
                   .subject_name(template.subject)
                   .issuer_name(issuer_name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(moment - BACKDATE)
                   .not_valid_after(end))
        builder = _with_extensions(builder, template, key, signing_key)
        cert = builder.sign(signing_key, _hash_for(signing_key))
        check_issued(cert, key, signer_cert or cert, template, now=moment)
        ca_pem = self.ca_chain_pem if signer_cert is not None else cert_pem(cert)
        return NewCertificate(cert, key, ca_pem, notes)


def _with_extensions(builder: "x509.CertificateBuilder", template: "x509.Certificate", key: SigningKey,
                     signing_key: SigningKey) -> "x509.CertificateBuilder":
    """A leaf's extensions: not a CA, key ids, the key usages of its key type, and the SANs and extended
    key usages of the certificate it replaces (server and client auth when it had none)."""
    builder = (builder
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                              critical=False))
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
    return builder


def check_issued(cert: "x509.Certificate", key: SigningKey, ca_cert: "x509.Certificate",
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


@dataclasses.dataclass(frozen=True)
class KeyPolicy:
    """How a renewal gets its key and validity: ``key_type``, ``reuse_key``, ``validity_days``."""

    key_type: str
    reuse_key: bool
    validity_days: int


def renew_certificate(issuer: Issuer, policy: KeyPolicy, *, obj: str, leaf: "x509.Certificate",
                      old_key_pem: t.Optional[bytes], key_what: str) -> NewCertificate:
    """The renewal of ``leaf`` (the certificate of ``obj``): a new or reused key, then a new certificate.
    ``old_key_pem`` is the stored key (``key_what`` names where it is kept, for messages)."""
    if policy.reuse_key:
        if not old_key_pem:
            raise RunbookError("renew %s: reuse_key is set but there is no existing private key (%s)" % (obj, key_what))
        key = load_private_key(old_key_pem, key_what)
        if not key_matches(key, leaf):
            raise RunbookError("renew %s: reuse_key is set but the existing private key (%s) does not match "
                               "the certificate; nothing was written" % (obj, key_what))
    else:
        key = generate_key(policy.key_type)
    try:
        return issuer.issue(leaf, key, policy.validity_days)
    except RunbookError as exc:
        raise RunbookError("renew %s: %s; nothing was written" % (obj, exc.msg))
