# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JWT signing key material: making keys, RFC 7638 key ids, and the forms a key is published or
handed to an application in (public JWK, PKCS#8 PEM, the raw HMAC secret).

Pure: knows nothing about key states or Kubernetes (see :mod:`._jwks` and :mod:`._jwt_rotate`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError

JWK = t.Dict[str, t.Any]
"""A JSON Web Key (RFC 7517) as a dict."""

# alg -> (kty, curve or HMAC secret length in random bytes)
ALGORITHMS: t.Dict[str, t.Tuple[str, t.Any]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None), "PS256": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    "HS256": ("oct", 32), "HS512": ("oct", 64),
}
HMAC_ALGORITHMS = ("HS256", "HS512")
META_MEMBERS = ("state", "created", "activated", "retire_at")
# RFC 7638 section 3.2: the required members of each key type, in lexicographic order.
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                      "oct": ("k", "kty")}
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # larger keys take minutes to make and nothing verifies them faster


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64u(value: int, length: t.Optional[int] = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return b64u(value.to_bytes(length, "big"))


def _b64u_int(text: str) -> int:
    return int.from_bytes(b64u_decode(text), "big")


# ----------------------------------------------------------------------------------------------
# Keys


def thumbprint(jwk: t.Mapping[str, t.Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the key id of every key this module makes."""
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(str(kty))
    if members is None:
        raise RunbookError("cannot compute the thumbprint of a key of type %r" % kty)
    missing = [m for m in members if m not in jwk]
    if missing:
        raise RunbookError("key of type %s lacks the member(s) %s" % (kty, ", ".join(missing)))
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canonical.encode("utf-8")).digest())


def check_algorithm(alg: str, key_size: t.Optional[int]) -> None:
    """``alg`` is one of :data:`ALGORITHMS`; an RSA algorithm has a ``key_size`` within bounds."""
    if alg not in ALGORITHMS:
        raise RunbookError("algorithm %r is not supported (use %s)" % (alg, ", ".join(ALGORITHMS)))
    if ALGORITHMS[alg][0] != "RSA":
        return
    if key_size is None:
        raise ValueError("an RSA key needs a key_size")
    if key_size < MIN_RSA_BITS:
        raise RunbookError("key_size %d is too small for %s: RSA keys need at least %d bits" % (key_size, alg, MIN_RSA_BITS))
    if key_size > MAX_RSA_BITS:
        raise RunbookError("key_size %d is too large for %s: at most %d bits (a larger key takes minutes to make)"
                           % (key_size, alg, MAX_RSA_BITS))


def generate_jwk(alg: str, key_size: t.Optional[int] = None) -> JWK:
    """A new private JWK for ``alg`` with ``kid`` (its thumbprint), ``alg`` and ``use: sig``;
    ``key_size`` is for RSA algorithms only.

    HMAC secrets are random printable text (base64url of 32 or 64 random bytes): the same bytes
    work as the JWK ``k`` and as an environment variable an application reads as a string.
    """
    check_algorithm(alg, key_size)
    kty, param = ALGORITHMS[alg]
    if kty == "oct":
        secret = b64u(secrets.token_bytes(param)).encode("ascii")
        jwk: JWK = {"kty": "oct", "k": b64u(secret)}
    elif kty == "RSA":
        jwk = _rsa_jwk(key_size or 0)
    elif kty == "EC":
        jwk = _ec_jwk(param)
    else:
        jwk = _ed25519_jwk()
    jwk["kid"] = thumbprint(jwk)
    jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


def _rsa_jwk(key_size: int) -> JWK:
    from cryptography.hazmat.primitives.asymmetric import rsa

    priv = rsa.generate_private_key(public_exponent=65537, key_size=key_size).private_numbers()
    pub = priv.public_numbers
    return {"kty": "RSA", "n": _int_b64u(pub.n), "e": _int_b64u(pub.e), "d": _int_b64u(priv.d),
            "p": _int_b64u(priv.p), "q": _int_b64u(priv.q), "dp": _int_b64u(priv.dmp1),
            "dq": _int_b64u(priv.dmq1), "qi": _int_b64u(priv.iqmp)}


def _ec_jwk(crv: str) -> JWK:
    from cryptography.hazmat.primitives.asymmetric import ec

    curve: ec.EllipticCurve
    curve, size = (ec.SECP256R1(), 32) if crv == "P-256" else (ec.SECP384R1(), 48)
    priv = ec.generate_private_key(curve).private_numbers()
    return {"kty": "EC", "crv": crv, "x": _int_b64u(priv.public_numbers.x, size),
            "y": _int_b64u(priv.public_numbers.y, size), "d": _int_b64u(priv.private_value, size)}


def _ed25519_jwk() -> JWK:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return {"kty": "OKP", "crv": "Ed25519",
            "x": b64u(key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)),
            "d": b64u(key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))}


def rsa_bits(jwk: t.Mapping[str, t.Any]) -> t.Optional[int]:
    if jwk.get("kty") != "RSA" or "n" not in jwk:
        return None
    return _b64u_int(jwk["n"]).bit_length()


def public_jwk(jwk: t.Mapping[str, t.Any]) -> JWK:
    """The public members of a key (no private parameters, no state metadata)."""
    if jwk.get("kty") == "oct":
        raise RunbookError("key %s is a shared HMAC secret (%s): it has no public part and is never published"
                           % (jwk.get("kid"), jwk.get("alg")))
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    public = {m: jwk[m] for m in members}
    public.update(kid=jwk["kid"], alg=jwk["alg"], use=jwk.get("use", "sig"))
    return public


def jwk_without_meta(jwk: t.Mapping[str, t.Any]) -> JWK:
    return {k: v for k, v in jwk.items() if k not in META_MEMBERS}


def private_pem(jwk: t.Mapping[str, t.Any]) -> str:
    """The private key as unencrypted PKCS#8 PEM (asymmetric keys only)."""
    from cryptography.hazmat.primitives import serialization

    kty = jwk.get("kty")
    if kty == "RSA":
        from cryptography.hazmat.primitives.asymmetric import rsa

        pub = rsa.RSAPublicNumbers(_b64u_int(jwk["e"]), _b64u_int(jwk["n"]))
        key: t.Any = rsa.RSAPrivateNumbers(
            p=_b64u_int(jwk["p"]), q=_b64u_int(jwk["q"]), d=_b64u_int(jwk["d"]), dmp1=_b64u_int(jwk["dp"]),
            dmq1=_b64u_int(jwk["dq"]), iqmp=_b64u_int(jwk["qi"]), public_numbers=pub).private_key()
    elif kty == "EC":
        from cryptography.hazmat.primitives.asymmetric import ec

        curve = ec.SECP256R1() if jwk["crv"] == "P-256" else ec.SECP384R1()
        key = ec.derive_private_key(_b64u_int(jwk["d"]), curve)
    elif kty == "OKP":
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.from_private_bytes(b64u_decode(jwk["d"]))
    else:
        raise RunbookError("key %s (%s) is a shared secret: it has no PEM form (use format raw or jwk)"
                           % (jwk.get("kid"), jwk.get("alg")))
    pem: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return pem.decode("ascii")


def hmac_secret(jwk: t.Mapping[str, t.Any]) -> bytes:
    if jwk.get("kty") != "oct":
        raise RunbookError("key %s (%s) is not a shared secret: format raw is only for HS256/HS512 keys (use pem or jwk)"
                           % (jwk.get("kid"), jwk.get("alg")))
    return b64u_decode(jwk["k"])


def export_active(jwk: t.Mapping[str, t.Any], fmt: str) -> bytes:
    """The active signing key as an application reads it from an environment variable."""
    if fmt == "raw":
        return hmac_secret(jwk)
    if fmt == "pem":
        return private_pem(jwk).encode("ascii")
    if fmt == "jwk":
        return json.dumps(jwk_without_meta(jwk), sort_keys=True).encode("ascii")
    raise RunbookError("active_key_secret: unknown format %r (use pem, jwk or raw)" % fmt)
