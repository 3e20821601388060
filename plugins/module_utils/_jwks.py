# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JWT signing keys kept in a Kubernetes Secret: generation, RFC 7638 key ids, the rotation state
machine (``next`` -> ``active`` -> ``retired`` -> dropped) and the read-modify-write against the API.

The pure part (:func:`generate_jwk`, :func:`thumbprint`, :class:`KeySet`, :func:`plan`) knows nothing
about Kubernetes and is unit-tested on its own; :func:`rotate` applies a plan to the cluster.

The Secret holds a private JWK Set (RFC 7517) whose keys carry four extra members, which JWK
consumers ignore: ``state`` (``next``, ``active`` or ``retired``), ``created``, ``activated`` and
``retire_at`` (UTC, ISO 8601). The active key comes first ("the first signs, all verify").
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import re
import secrets
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    RunbookError, isoformat, parse_time, utcnow,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    duration, k8s_data_key, k8s_name, no_control, number, shown,
)

# alg -> (kty, curve or HMAC secret length in random bytes)
ALGORITHMS: t.Dict[str, t.Tuple[str, t.Any]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None), "PS256": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    "HS256": ("oct", 32), "HS512": ("oct", 64),
}
HMAC_ALGORITHMS = ("HS256", "HS512")
STATES = ("next", "active", "retired")
META_MEMBERS = ("state", "created", "activated", "retire_at")
# RFC 7638 section 3.2: the required members of each key type, in lexicographic order.
_B64U = re.compile(r"^[A-Za-z0-9_-]*$")
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                      "oct": ("k", "kty")}
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # larger keys take minutes to make and nothing verifies them faster
# How many removed kids the set remembers, so that revoking a kid again is recognised (not a typo).
REMOVED_HISTORY = 100
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "runbook.ops"}
WORKLOAD_KINDS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


# ----------------------------------------------------------------------------------------------
# Encoding helpers


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


def check_algorithm(alg: str, key_size: int) -> None:
    if alg not in ALGORITHMS:
        raise RunbookError("algorithm %r is not supported (use %s)" % (alg, ", ".join(ALGORITHMS)))
    if ALGORITHMS[alg][0] == "RSA" and key_size < MIN_RSA_BITS:
        raise RunbookError("key_size %d is too small for %s: RSA keys need at least %d bits" % (key_size, alg, MIN_RSA_BITS))
    if ALGORITHMS[alg][0] == "RSA" and key_size > MAX_RSA_BITS:
        raise RunbookError("key_size %d is too large for %s: at most %d bits (a larger key takes minutes to make)"
                           % (key_size, alg, MAX_RSA_BITS))


def generate_jwk(alg: str, key_size: int = 3072) -> dict:
    """A new private JWK for ``alg`` with ``kid`` (its thumbprint), ``alg`` and ``use: sig``.

    HMAC secrets are random printable text (base64url of 32 or 64 random bytes): the same bytes
    work as the JWK ``k`` and as an environment variable an application reads as a string.
    """
    check_algorithm(alg, key_size)
    kty, param = ALGORITHMS[alg]
    jwk: dict
    if kty == "oct":
        secret = b64u(secrets.token_bytes(param)).encode("ascii")
        jwk = {"kty": "oct", "k": b64u(secret)}
    elif kty == "RSA":
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        priv = key.private_numbers()
        pub = priv.public_numbers
        jwk = {"kty": "RSA", "n": _int_b64u(pub.n), "e": _int_b64u(pub.e), "d": _int_b64u(priv.d),
               "p": _int_b64u(priv.p), "q": _int_b64u(priv.q), "dp": _int_b64u(priv.dmp1),
               "dq": _int_b64u(priv.dmq1), "qi": _int_b64u(priv.iqmp)}
    elif kty == "EC":
        from cryptography.hazmat.primitives.asymmetric import ec

        curve, size = (ec.SECP256R1(), 32) if param == "P-256" else (ec.SECP384R1(), 48)
        key = ec.generate_private_key(curve)
        priv_ec = key.private_numbers()
        jwk = {"kty": "EC", "crv": param, "x": _int_b64u(priv_ec.public_numbers.x, size),
               "y": _int_b64u(priv_ec.public_numbers.y, size), "d": _int_b64u(priv_ec.private_value, size)}
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        raw = serialization.Encoding.Raw
        jwk = {"kty": "OKP", "crv": "Ed25519",
               "x": b64u(key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)),
               "d": b64u(key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))}
    jwk["kid"] = thumbprint(jwk)
    jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


def rsa_bits(jwk: t.Mapping[str, t.Any]) -> t.Optional[int]:
    if jwk.get("kty") != "RSA" or "n" not in jwk:
        return None
    return _b64u_int(jwk["n"]).bit_length()


def public_jwk(jwk: t.Mapping[str, t.Any]) -> dict:
    """The public members of a key (no private parameters, no state metadata)."""
    if jwk.get("kty") == "oct":
        raise RunbookError("key %s is a shared HMAC secret (%s): it has no public part and is never published"
                           % (jwk.get("kid"), jwk.get("alg")))
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    public = {m: jwk[m] for m in members}
    public.update(kid=jwk["kid"], alg=jwk["alg"], use=jwk.get("use", "sig"))
    return public


def jwk_without_meta(jwk: t.Mapping[str, t.Any]) -> dict:
    return {k: v for k, v in jwk.items() if k not in META_MEMBERS}


def private_pem(jwk: t.Mapping[str, t.Any]) -> str:
    """The private key as unencrypted PKCS#8 PEM (asymmetric keys only)."""
    from cryptography.hazmat.primitives import serialization

    kty = jwk.get("kty")
    if kty == "RSA":
        from cryptography.hazmat.primitives.asymmetric import rsa

        pub = rsa.RSAPublicNumbers(_b64u_int(jwk["e"]), _b64u_int(jwk["n"]))
        key: t.Any = rsa.RSAPrivateNumbers(
            _b64u_int(jwk["p"]), _b64u_int(jwk["q"]), _b64u_int(jwk["d"]), _b64u_int(jwk["dp"]),
            _b64u_int(jwk["dq"]), _b64u_int(jwk["qi"]), pub).private_key()
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
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


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


# ----------------------------------------------------------------------------------------------
# The key set


def _time(value: t.Any, what: str) -> t.Optional[datetime.datetime]:
    if value in (None, ""):
        return None
    try:
        return parse_time(value, what)
    except RunbookError:
        raise RunbookError("the stored key set is damaged: %s is %r, not a timestamp" % (what, value))


class Key:
    """One key of the set: the private JWK and its life-cycle facts."""

    def __init__(self, jwk: dict, state: str, created: datetime.datetime,
                 activated: t.Optional[datetime.datetime] = None, retire_at: t.Optional[datetime.datetime] = None) -> None:
        self.jwk = jwk_without_meta(jwk)
        self.state = state
        self.created = created
        self.activated = activated
        self.retire_at = retire_at

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    @property
    def alg(self) -> str:
        return str(self.jwk.get("alg", ""))

    @property
    def is_hmac(self) -> bool:
        return self.jwk.get("kty") == "oct"

    def matches(self, alg: str, key_size: int) -> bool:
        if self.alg != alg:
            return False
        bits = rsa_bits(self.jwk)
        return bits is None or bits == key_size

    def facts(self) -> dict:
        """What may be shown: no key material."""
        return {"kid": self.kid, "alg": self.alg, "kty": self.jwk.get("kty"), "state": self.state,
                "created": isoformat(self.created),
                "activated": isoformat(self.activated) if self.activated else None,
                "retire_at": isoformat(self.retire_at) if self.retire_at else None}

    def to_json(self) -> dict:
        entry = dict(self.jwk)
        entry["state"] = self.state
        entry["created"] = isoformat(self.created)
        if self.activated:
            entry["activated"] = isoformat(self.activated)
        if self.retire_at:
            entry["retire_at"] = isoformat(self.retire_at)
        return entry


_ORDER = {"active": 0, "next": 1, "retired": 2}


class KeySet:
    """The keys, and the kids removed lately (member ``removed`` of the stored set: ``kid``, ``removed``
    (when) and ``reason``, ``revoked`` or ``dropped``), so that revoking an already removed kid again is
    recognised and not taken for a mistyped one."""

    def __init__(self, keys: t.Optional[t.List[Key]] = None, removed: t.Optional[t.List[dict]] = None) -> None:
        self.keys: t.List[Key] = list(keys or [])
        self.removed: t.List[dict] = list(removed or [])

    @classmethod
    def parse(cls, text: t.Union[str, bytes, None], now: datetime.datetime, grace: float,
              where: str = "the key set") -> "KeySet":
        """Read a stored set. Keys without state (a JWK Set written by hand or another tool) are
        adopted: the first becomes active, the others retired for ``grace`` seconds."""
        if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
            return cls()
        try:
            doc = json.loads(text)
        except ValueError:
            raise RunbookError("%s is not JSON; refusing to overwrite it (remove it or choose another secret_key)" % where)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise RunbookError("%s is not a JWK Set (a JSON object with a \"keys\" list); refusing to overwrite it" % where)
        keys: t.List[Key] = []
        for index, entry in enumerate(doc["keys"]):
            if not isinstance(entry, dict) or entry.get("kty") not in THUMBPRINT_MEMBERS:
                raise RunbookError("%s: entry %d is not a JWK of a supported type (RSA, EC, OKP, oct)" % (where, index))
            entry = dict(entry)
            for member in THUMBPRINT_MEMBERS[entry["kty"]] + tuple(m for m in PRIVATE_MEMBERS if m in entry and m != "oth"):
                if member != "kty" and not (isinstance(entry.get(member), str) and _B64U.match(entry[member])):
                    raise RunbookError("the stored key set is damaged: %s: member %s of entry %d is missing or not "
                                       "base64url text" % (where, member, index))
            entry.setdefault("kid", thumbprint(entry))
            if not isinstance(entry["kid"], str) or not entry["kid"]:
                raise RunbookError("the stored key set is damaged: %s: entry %d has a kid that is not text" % (where, index))
            if "alg" not in entry:
                raise RunbookError("%s: key %s has no alg member" % (where, entry["kid"]))
            if not isinstance(entry["alg"], str):
                raise RunbookError("the stored key set is damaged: %s: alg of key %s is not text" % (where, entry["kid"]))
            entry.setdefault("use", "sig")
            state = entry.get("state")
            created = _time(entry.get("created"), "created of key %s" % entry["kid"]) or now
            activated = _time(entry.get("activated"), "activated of key %s" % entry["kid"])
            retire_at = _time(entry.get("retire_at"), "retire_at of key %s" % entry["kid"])
            if state is None:
                if not keys and not any(e.get("state") == "active" for e in doc["keys"] if isinstance(e, dict)):
                    state, activated = "active", activated or created
                else:
                    state, retire_at = "retired", retire_at or now + datetime.timedelta(seconds=grace)
            if state not in STATES:
                raise RunbookError("%s: key %s has an unknown state %r" % (where, entry["kid"], state))
            if state == "active" and activated is None:
                activated = created
            if state == "retired" and retire_at is None:
                retire_at = now + datetime.timedelta(seconds=grace)
            if any(k.kid == entry["kid"] for k in keys):
                raise RunbookError("%s holds key %s twice" % (where, entry["kid"]))
            keys.append(Key(entry, state, created, activated, retire_at))
        removed = [dict(kid=item["kid"], removed=str(item.get("removed") or ""), reason=str(item.get("reason") or ""))
                   for item in doc.get("removed") or [] if isinstance(item, dict) and isinstance(item.get("kid"), str)]
        return cls(keys, removed)

    def sorted(self) -> "KeySet":
        def order(key: Key) -> t.Tuple[int, float]:
            moment = key.activated or key.created
            return _ORDER[key.state], -moment.timestamp()
        return KeySet(sorted(self.keys, key=order), self.removed)

    def dump(self) -> str:
        doc: dict = {"keys": [k.to_json() for k in self.sorted().keys]}
        if self.removed:
            doc["removed"] = self.removed[-REMOVED_HISTORY:]
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    def was_removed(self, kid: str) -> t.Optional[dict]:
        """The latest history entry of ``kid`` when it was revoked or dropped lately."""
        found = [item for item in self.removed if item.get("kid") == kid]
        return found[-1] if found else None

    def describe(self) -> str:
        """The kids with their states, for a message (public facts only)."""
        if not self.keys:
            return "no key"
        return ", ".join("%s (%s, %s)" % (k.kid, k.state, k.alg) for k in self.sorted().keys)

    def by_state(self, state: str) -> t.List[Key]:
        return [k for k in self.keys if k.state == state]

    @property
    def active(self) -> t.Optional[Key]:
        found = self.by_state("active")
        return found[0] if found else None

    @property
    def next(self) -> t.Optional[Key]:
        found = self.by_state("next")
        return found[0] if found else None

    def kids(self) -> t.List[str]:
        return [k.kid for k in self.keys]

    def facts(self) -> t.List[dict]:
        return [k.facts() for k in self.sorted().keys]

    def public(self) -> dict:
        """The public JWK Set: next, active and retired keys, HMAC secrets left out."""
        return {"keys": [public_jwk(k.jwk) for k in self.sorted().keys if not k.is_hmac]}


# ----------------------------------------------------------------------------------------------
# The rotation state machine


class Policy:
    def __init__(self, algorithm: str = "RS256", key_size: int = 3072, rotate_after: float = 30 * 86400.0,
                 grace_period: float = 86400.0, prepublish: float = 0.0, force: bool = False,
                 revoke: t.Optional[t.Sequence[str]] = None) -> None:
        check_algorithm(algorithm, key_size)
        for name, value in (("rotate_after", rotate_after), ("grace_period", grace_period), ("prepublish", prepublish)):
            if value < 0:
                raise RunbookError("%s must not be negative" % name)
        if rotate_after <= 0:
            raise RunbookError("rotate_after must be longer than 0 (it would rotate on every run); use force=true to "
                               "rotate now")
        if prepublish > rotate_after:
            raise RunbookError("prepublish %s is longer than rotate_after %s: a next key can be published at most "
                               "rotate_after before its rotation, so every rotation would wait for it and each key "
                               "would sign for longer than rotate_after; choose a prepublish of at most %s (about how "
                               "long verifiers cache the public key set)"
                               % (_human(prepublish), _human(rotate_after), _human(rotate_after)))
        self.algorithm = algorithm
        self.key_size = key_size
        self.rotate_after = rotate_after
        self.grace_period = grace_period
        self.prepublish = prepublish
        self.force = force
        revoke = [str(r).strip() for r in (revoke or []) if str(r).strip()]
        self.revoke_all = "all" in revoke
        if self.revoke_all and len(revoke) > 1:
            raise RunbookError("revoke: use either all or a list of kids, not both")
        self.revoke = [] if self.revoke_all else revoke


class Plan:
    """The outcome of :func:`plan`: the new set and what happened, in words and facts."""

    def __init__(self, before: KeySet, after: KeySet) -> None:
        self.before = before
        self.after = after
        self.rotated = False
        self.revoked: t.List[str] = []
        self.dropped: t.List[str] = []
        self.generated: t.List[str] = []
        self.pending = False
        self.events: t.List[str] = []
        self.notes: t.List[str] = []  # facts worth saying that change nothing
        self.next_rotation: t.Optional[datetime.datetime] = None

    @property
    def changed(self) -> bool:
        return self.before.dump() != self.after.dump()

    @property
    def active_kid(self) -> str:
        active = self.after.active
        return active.kid if active else ""


def plan(current: KeySet, policy: Policy, now: datetime.datetime,
         generate: t.Callable[[str, int], dict] = generate_jwk, where: str = "the key set") -> Plan:
    """Decide the next state of the key set. Pure: ``current`` is not changed.

    Order: revoke (no grace), drop retired keys past ``retire_at``, discard a ``next`` key of another
    algorithm, then rotate when there is no active key, when ``force``, when the active key is older
    than ``rotate_after`` or has another algorithm/size. With ``prepublish`` a scheduled rotation first
    adds a ``next`` key (``prepublish`` before it is due) and activates it once it is that old;
    ``force`` and a missing active key activate at once (a published ``next`` key is preferred).
    The outgoing active key is retired until ``now + grace_period``.

    A kid to revoke that is neither in the set nor among the kids it removed lately is refused (a
    mistyped kid must not read as "revoked"): nothing is planned, the error names the kids there are.
    """
    before = KeySet([copy.deepcopy(k) for k in current.keys], copy.deepcopy(current.removed))
    keys = KeySet([copy.deepcopy(k) for k in current.keys], copy.deepcopy(current.removed))
    result = Plan(before, keys)
    unknown = [kid for kid in policy.revoke if kid not in current.kids() and current.was_removed(kid) is None]
    if unknown:
        raise RunbookError("revoke: no key with %s %s in %s, so nothing was revoked and nothing changed; the set holds "
                           "%s. Give the kid exactly as the set has it (the kid header of the tokens signed with that "
                           "key), or revoke=all to remove every key"
                           % ("kid" if len(unknown) == 1 else "kids", ", ".join(shown(kid) for kid in unknown),
                              where, current.describe()),
                           existing_kids=current.kids(), unknown_kids=unknown)
    stamp = isoformat(now)

    def new_key() -> Key:
        jwk = generate(policy.algorithm, policy.key_size)
        result.generated.append(str(jwk["kid"]))
        return Key(jwk, "next", now)

    def promote(key: Key, reason: str) -> None:
        old = keys.active
        if old is not None:
            old.state = "retired"
            old.retire_at = now + datetime.timedelta(seconds=policy.grace_period)
            result.events.append("key %s retired, verifies until %s" % (old.kid, isoformat(old.retire_at)))
        key.state = "active"
        key.activated = now
        key.retire_at = None
        if key not in keys.keys:
            keys.keys.append(key)
        result.rotated = True
        result.events.append("key %s (%s) active: %s" % (key.kid, key.alg, reason))

    # 1. revoke: gone at once, no grace.
    targets = set(keys.kids()) if policy.revoke_all else set(policy.revoke)
    for key in list(keys.keys):
        if key.kid in targets:
            keys.keys.remove(key)
            result.revoked.append(key.kid)
            keys.removed.append({"kid": key.kid, "removed": stamp, "reason": "revoked"})
    if result.revoked:
        result.events.append("revoked %s" % ", ".join(result.revoked))
    for kid in policy.revoke:
        earlier = current.was_removed(kid) if kid not in current.kids() else None
        if earlier is not None:
            result.notes.append("key %s was already %s at %s"
                                % (kid, earlier.get("reason") or "removed", earlier.get("removed") or "an earlier run"))
    # 2. retired keys past their grace period.
    for key in list(keys.keys):
        if key.state == "retired" and key.retire_at is not None and key.retire_at <= now:
            keys.keys.remove(key)
            result.dropped.append(key.kid)
            keys.removed.append({"kid": key.kid, "removed": stamp, "reason": "dropped"})
    # More than one active key (edited by hand): keep the newest, retire the others.
    actives = sorted(keys.by_state("active"), key=lambda k: (k.activated or k.created).timestamp(), reverse=True)
    for extra in actives[1:]:
        extra.state, extra.retire_at = "retired", now + datetime.timedelta(seconds=policy.grace_period)
    nexts = sorted(keys.by_state("next"), key=lambda k: k.created.timestamp())
    for extra in nexts[:-1]:
        keys.keys.remove(extra)
        result.dropped.append(extra.kid)
        keys.removed.append({"kid": extra.kid, "removed": stamp, "reason": "dropped"})
    # 3. a prepared key of another algorithm is never used.
    nxt = keys.next
    if nxt is not None and not nxt.matches(policy.algorithm, policy.key_size):
        keys.keys.remove(nxt)
        result.dropped.append(nxt.kid)
        keys.removed.append({"kid": nxt.kid, "removed": stamp, "reason": "dropped"})
        result.events.append("next key %s (%s) discarded: algorithm is now %s" % (nxt.kid, nxt.alg, policy.algorithm))
        nxt = None
    if result.dropped:
        result.events.insert(0, "dropped %s" % ", ".join(result.dropped))
    del keys.removed[:-REMOVED_HISTORY]

    # 4. rotation.
    active = keys.active
    prepublish = datetime.timedelta(seconds=policy.prepublish)
    if active is None:
        promote(nxt or new_key(), "the set had no active key")
    elif policy.force:
        promote(nxt or new_key(), "forced rotation")
    else:
        if not (active.activated is not None):
            raise AssertionError('expected active.activated is not None')
        due_at = active.activated + datetime.timedelta(seconds=policy.rotate_after)
        mismatch = not active.matches(policy.algorithm, policy.key_size)
        due = mismatch or now >= due_at
        reason = ("algorithm or key size changed from %s to %s" % (active.alg, policy.algorithm) if mismatch
                  else "the active key was older than rotate_after")
        if policy.prepublish <= 0:
            if due:
                promote(nxt or new_key(), reason)
        elif due or now >= due_at - prepublish:
            if nxt is None:
                nxt = new_key()
                keys.keys.append(nxt)
                result.events.append("key %s (%s) published as next; activates once it is %s old"
                                     % (nxt.kid, nxt.alg, _human(policy.prepublish)))
            if due:
                if nxt.created + prepublish <= now:
                    promote(nxt, reason + ", next key published since %s" % isoformat(nxt.created))
                else:
                    result.pending = True
                    result.events.append("rotation due; next key %s activates at %s"
                                         % (nxt.kid, isoformat(nxt.created + prepublish)))
    active = keys.active
    if not (active is not None and active.activated is not None):
        raise AssertionError('expected active is not None and active.activated is not None')
    result.next_rotation = active.activated + datetime.timedelta(seconds=policy.rotate_after)
    nxt = keys.next
    if nxt is not None:
        result.next_rotation = max(result.next_rotation, nxt.created + prepublish)
    result.after = keys.sorted()
    return result


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return "%d%s" % (seconds // size, unit)
    return "%gs" % seconds


# ----------------------------------------------------------------------------------------------
# Kubernetes


def _secret_text(obj: t.Optional[dict], key: str) -> t.Optional[bytes]:
    if obj is None:
        return None
    value = (obj.get("data") or {}).get(key)
    if value is None:
        return None
    return base64.b64decode(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _forbidden_hint(exc: RunbookError, need: str) -> RunbookError:
    from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sForbidden

    if isinstance(exc, K8sForbidden):
        return RunbookError("%s (jwt_rotate needs %s)" % (exc.msg, need), **exc.details)
    return exc


class Target:
    """Where a copy goes: the public set or the active key."""

    def __init__(self, kind: str, name: str, namespace: str, key: str) -> None:
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.key = key

    @property
    def plural(self) -> str:
        return "configmaps" if self.kind == "ConfigMap" else "secrets"

    @property
    def ref(self) -> str:
        return "%s/%s/%s" % (self.kind, self.namespace, self.name)

    def current(self, obj: t.Optional[dict]) -> t.Optional[bytes]:
        if obj is None:
            return None
        if self.kind == "ConfigMap":
            value = (obj.get("data") or {}).get(self.key)
            return None if value is None else value.encode("utf-8")
        return _secret_text(obj, self.key)

    def put(self, obj: dict, content: bytes) -> None:
        if self.kind == "ConfigMap":
            obj.setdefault("data", {})
            if obj["data"] is None:
                obj["data"] = {}
            obj["data"][self.key] = content.decode("utf-8")
        else:
            if obj.get("data") is None:
                obj["data"] = {}
            obj["data"][self.key] = _b64(content)


def write_key(client: t.Any, target: Target, content: bytes, check_mode: bool, attempts: int = 5) -> bool:
    """Set one key of a ConfigMap or Secret (created when absent), other keys untouched; optimistic
    concurrency through resourceVersion. Returns whether anything changed."""
    from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sConflict

    for attempt in range(1, attempts + 1):
        obj = client.get("v1", target.plural, target.name, target.namespace, missing_ok=True)
        if target.current(obj) == content:
            return False
        if check_mode:
            return True
        try:
            if obj is None:
                body: dict = {"metadata": {"name": target.name, "namespace": target.namespace,
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


MAX_DURATION = 100 * 365 * 86400.0
MAX_WAIT = 86400


def _optional_duration(params: t.Mapping[str, t.Any], option: str, default: str) -> float:
    value = params.get(option)
    return duration(option, default if value is None or value == "" else value, 0.0, MAX_DURATION)


def validate_params(params: t.Mapping[str, t.Any]) -> None:
    """Every name, number and duration a user (or a survey) can set, checked before the API is asked."""
    k8s_name("namespace", params.get("namespace"), label=True)
    k8s_name("secret_name", params.get("secret_name"))
    k8s_data_key("secret_key", params.get("secret_key") or "jwks.json")
    key_size = params.get("key_size")
    if key_size is not None:
        number("key_size", key_size, 1, MAX_RSA_BITS * 8)
    for option in ("public_jwks", "active_key_secret"):
        target = params.get(option)
        if target:
            k8s_name("%s.name" % option, target.get("name"))
            if target.get("namespace"):
                k8s_name("%s.namespace" % option, target["namespace"], label=True)
            if target.get("key"):
                k8s_data_key("%s.key" % option, target["key"])
    for index, item in enumerate(params.get("restart") or []):
        k8s_name("restart[%d].name" % index, item.get("name"))
        if item.get("namespace"):
            k8s_name("restart[%d].namespace" % index, item["namespace"], label=True)
    for index, kid in enumerate(params.get("revoke") or []):
        no_control("revoke[%d]" % index, kid)
        if len(str(kid)) > 512:
            raise RunbookError("revoke[%d] %s is longer than 512 characters; it is no kid of this set" % (index, shown(kid)))
    if params.get("wait_timeout") is not None:
        number("wait_timeout", params["wait_timeout"], 1, MAX_WAIT)
    if params.get("now"):
        no_control("now", params["now"])


def _read_options(params: t.Mapping[str, t.Any]) -> t.Tuple[Policy, datetime.datetime]:
    validate_params(params)
    policy = Policy(
        algorithm=params.get("algorithm") or "RS256",
        key_size=int(params.get("key_size") or 3072),
        rotate_after=duration("rotate_after", params.get("rotate_after") or "30d", 0.0, MAX_DURATION, above=True),
        grace_period=_optional_duration(params, "grace_period", "24h"),
        prepublish=_optional_duration(params, "prepublish", "0"),
        force=bool(params.get("force")),
        revoke=params.get("revoke") or [],
    )
    now = parse_time(params.get("now"), "now")
    if not 1970 <= now.year <= 9000:
        raise RunbookError("now %s is out of range: give a time between the years 1970 and 9000" % shown(params.get("now")))
    return policy, now


def _targets(params: t.Mapping[str, t.Any]) -> t.Tuple[t.Optional[Target], t.Optional[Target], str]:
    ns = params["namespace"]
    pub_opt = params.get("public_jwks")
    public = None
    if pub_opt:
        public = Target(pub_opt.get("kind") or "ConfigMap", pub_opt["name"], pub_opt.get("namespace") or ns,
                        pub_opt.get("key") or "jwks.json")
    act_opt = params.get("active_key_secret")
    active = None
    fmt = ""
    if act_opt:
        active = Target("Secret", act_opt["name"], act_opt.get("namespace") or ns, act_opt.get("key") or "jwt-secret")
        fmt = act_opt.get("format") or ("raw" if params.get("algorithm", "RS256") in HMAC_ALGORITHMS else "pem")
        if active.name == params["secret_name"] and active.namespace == ns and active.key == params["secret_key"]:
            raise RunbookError("active_key_secret: key %s of Secret/%s/%s is where the key set itself is kept; "
                               "choose another key" % (active.key, ns, active.name))
    if public is not None and public.kind == "Secret" and public.name == params["secret_name"] \
            and public.namespace == ns and public.key == params["secret_key"]:
        raise RunbookError("public_jwks: key %s of Secret/%s/%s is where the private key set is kept; choose another key"
                           % (public.key, ns, public.name))
    return public, active, fmt


def _validate_combination(policy: Policy, public: t.Optional[Target], fmt: str) -> None:
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


def _check_workloads(client: t.Any, restart: t.Sequence[t.Mapping[str, t.Any]], ns: str) -> t.List[t.Tuple[str, str, str]]:
    found = []
    for item in restart or []:
        kind = item.get("kind") or "Deployment"
        if kind not in WORKLOAD_KINDS:
            raise RunbookError("restart: kind %r is not supported (use %s)" % (kind, ", ".join(WORKLOAD_KINDS)))
        where = item.get("namespace") or ns
        client.get("apps/v1", WORKLOAD_KINDS[kind], item["name"], where)  # K8sNotFound names the workload
        found.append((kind, item["name"], where))
    return found


def _rollout_done(kind: str, obj: dict, generation: int) -> t.Tuple[bool, str]:
    """kubectl rollout status, in one function: (done, what is still missing)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if status.get("observedGeneration", 0) < generation:
        return False, "the controller has not seen the new template yet"
    if kind == "Deployment":
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                raise RunbookError("rollout of Deployment/%s/%s failed: %s" % (
                    obj["metadata"]["namespace"], obj["metadata"]["name"], cond.get("message", "progress deadline exceeded")))
        want = spec.get("replicas", 1)
        updated, total, available = (status.get("updatedReplicas", 0), status.get("replicas", 0),
                                     status.get("availableReplicas", 0))
        if updated < want:
            return False, "%d of %d new replicas updated" % (updated, want)
        if total > updated:
            return False, "%d old replicas pending termination" % (total - updated)
        if available < updated:
            return False, "%d of %d updated replicas available" % (available, updated)
        return True, ""
    if kind == "StatefulSet":
        if (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
            return True, ""
        want = spec.get("replicas", 1)
        if status.get("readyReplicas", 0) < want:
            return False, "%d of %d replicas ready" % (status.get("readyReplicas", 0), want)
        if status.get("updateRevision") != status.get("currentRevision"):
            return False, "%d of %d replicas updated" % (status.get("updatedReplicas", 0), want)
        return True, ""
    want = status.get("desiredNumberScheduled", 0)
    if status.get("updatedNumberScheduled", 0) < want:
        return False, "%d of %d pods updated" % (status.get("updatedNumberScheduled", 0), want)
    if status.get("numberAvailable", 0) < want:
        return False, "%d of %d updated pods available" % (status.get("numberAvailable", 0), want)
    return True, ""


def wait_rollouts(client: t.Any, started: t.Sequence[t.Tuple[str, str, str, int]], timeout: float,
                  interval: float = 1.0) -> t.Optional[str]:
    """Wait until every restarted workload finished rolling out; the problem in words on timeout."""
    deadline = time.monotonic() + timeout
    pending = list(started)
    last = ""
    while pending:
        still = []
        for kind, name, ns, generation in pending:
            obj = client.get("apps/v1", WORKLOAD_KINDS[kind], name, ns)
            done, why = _rollout_done(kind, obj, generation)
            if not done:
                still.append((kind, name, ns, generation))
                last = "%s/%s/%s: %s" % (kind, ns, name, why)
        pending = still
        if not pending:
            return None
        if time.monotonic() >= deadline:
            names = ", ".join("%s/%s/%s" % (item[0], item[2], item[1]) for item in pending)
            return "timed out after %gs waiting for the rollout of %s (%s)" % (timeout, names, last)
        time.sleep(interval)
    return None


def rotate(client: t.Any, params: t.Mapping[str, t.Any], check_mode: bool = False, diff: bool = False,
           attempts: int = 5, warn: t.Optional[t.Callable[[str], None]] = None) -> dict:
    """Apply the rotation policy to ``Secret/<namespace>/<secret_name>`` and its copies."""
    from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sConflict, K8sError

    policy, now = _read_options(params)
    ns, name, skey = params["namespace"], params["secret_name"], params.get("secret_key") or "jwks.json"
    ref = "Secret/%s/%s" % (ns, name)
    public, active_target, fmt = _targets(params)
    _validate_combination(policy, public, fmt)
    warnings: t.List[str] = []
    try:
        workloads = _check_workloads(client, params.get("restart") or [], ns)
    except K8sError as exc:
        raise _forbidden_hint(exc, "get on the workloads it restarts")

    first_active: t.Optional[str] = None
    first_kids: t.Optional[t.List[str]] = None
    result_plan: t.Optional[Plan] = None
    concurrent = False
    for attempt in range(1, attempts + 1):
        try:
            obj = client.get("v1", "secrets", name, ns, missing_ok=True)
        except K8sError as exc:
            raise _forbidden_hint(exc, "get, create and update on secrets in namespace %s" % ns)
        current = KeySet.parse(_secret_text(obj, skey), now, policy.grace_period,
                               where="key %s of %s" % (skey, ref))
        active = current.active
        if first_kids is None:
            first_active, first_kids = (active.kid if active else None), current.kids()
        effective = policy
        if attempt > 1 and (active.kid if active else None) != first_active:
            # Someone else rotated in between: that rotation is the one asked for; a revoke of "all"
            # means the keys that existed when this run started, not the one just made.
            concurrent = True
            effective = copy.copy(policy)
            effective.force = False
            if policy.revoke_all:
                effective.revoke_all, effective.revoke = False, list(first_kids)
        if attempt > 1 and effective.revoke:
            # The kids to revoke were checked against the set as first read; one that went away since
            # (another run revoked or dropped it) is simply gone.
            if effective is policy:
                effective = copy.copy(policy)
            effective.revoke = [kid for kid in effective.revoke if kid in current.kids()]
        try:
            result_plan = plan(current, effective, now, where="key %s of %s" % (skey, ref))
        except OverflowError:
            raise RunbookError("key %s of %s holds a date that, with rotate_after, grace_period or prepublish, is out "
                               "of the range of dates (past the year 9999); fix the stored dates or the durations"
                               % (skey, ref))
        if not result_plan.changed or check_mode:
            break
        data = result_plan.after.dump().encode("utf-8")
        try:
            if obj is None:
                body = {"metadata": {"name": name, "namespace": ns, "labels": dict(MANAGED_LABELS)},
                        "type": "Opaque", "data": {skey: _b64(data)}}
                client.create("v1", "secrets", body, ns)
            else:
                if obj.get("data") is None:
                    obj["data"] = {}
                obj["data"][skey] = _b64(data)
                client.replace("v1", "secrets", obj, ns)
            break
        except K8sConflict:
            concurrent = True
            if attempt == attempts:
                raise RunbookError("cannot update %s: it kept changing under this run (%d attempts); "
                                   "another rotation is running" % (ref, attempts))
            time.sleep(0.05 * attempt)
        except K8sError as exc:
            raise _forbidden_hint(exc, "get, create and update on secrets in namespace %s" % ns)
    if not (result_plan is not None):
        raise AssertionError('expected result_plan is not None')
    keyset = result_plan.after
    changed = result_plan.changed

    public_result = None
    if public is not None:
        document = keyset.public()
        content = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8")
        try:
            pub_changed = write_key(client, public, content, check_mode)
        except K8sError as exc:
            raise _forbidden_hint(exc, "get, create and update on %ss in namespace %s" % (public.kind.lower(), public.namespace))
        changed = changed or pub_changed
        public_result = {"kind": public.kind, "name": public.name, "namespace": public.namespace, "key": public.key,
                         "changed": pub_changed, "kids": [k["kid"] for k in document["keys"]], "jwks": document}

    active_result = None
    if active_target is not None:
        active_key = keyset.active
        if not (active_key is not None):
            raise AssertionError('expected active_key is not None')
        if fmt == "raw" and not active_key.is_hmac or fmt == "pem" and active_key.is_hmac:
            raise RunbookError("active_key_secret: format %s does not fit the active key %s (%s)" % (fmt, active_key.kid, active_key.alg))
        try:
            act_changed = write_key(client, active_target, export_active(active_key.jwk, fmt), check_mode)
        except K8sError as exc:
            raise _forbidden_hint(exc, "get, create and update on secrets in namespace %s" % active_target.namespace)
        changed = changed or act_changed
        active_result = {"name": active_target.name, "namespace": active_target.namespace, "key": active_target.key,
                         "format": fmt, "kid": active_key.kid, "changed": act_changed}

    restarted: t.List[str] = []
    failure = None
    if changed and workloads:
        stamp = isoformat(utcnow())
        started = []
        for kind, wname, wns in workloads:
            restarted.append("%s/%s/%s" % (kind, wns, wname))
            if check_mode:
                continue
            try:
                obj = client.rollout_restart("apps/v1", WORKLOAD_KINDS[kind], wname, wns, at=stamp)
            except K8sError as exc:
                raise _forbidden_hint(exc, "patch on %ss in namespace %s" % (kind.lower(), wns))
            started.append((kind, wname, wns, int(obj["metadata"].get("generation", 0))))
        if params.get("wait") and started:
            failure = wait_rollouts(client, started, float(params.get("wait_timeout") or 300))

    active_key = keyset.active
    if not (active_key is not None):
        raise AssertionError('expected active_key is not None')
    if result_plan.pending:
        warnings.append("rotation is due but the next key %s was published less than prepublish ago; it is activated "
                        "by a run after %s" % (keyset.next.kid if keyset.next else "?",
                                               isoformat(result_plan.next_rotation) if result_plan.next_rotation else "?"))
    if concurrent and not result_plan.changed:
        events = ["another run changed %s at the same time; found active key %s" % (ref, active_key.kid)]
    else:
        events = list(result_plan.events)
    msg = "; ".join(events) if events else "key set %s unchanged: active key %s, next rotation %s" % (
        ref, active_key.kid, isoformat(result_plan.next_rotation) if result_plan.next_rotation else "-")
    if result_plan.notes:
        msg += "; " + "; ".join(result_plan.notes)
    result: dict = {
        "changed": changed,
        "rotated": result_plan.rotated and result_plan.changed,
        "active_kid": active_key.kid,
        "keys": keyset.facts(),
        "revoked": list(result_plan.revoked),
        "dropped": list(result_plan.dropped),
        "public_jwks": public_result,
        "active_key_secret": active_result,
        "restarted": restarted,
        "secret": ref,
        "next_rotation": isoformat(result_plan.next_rotation) if result_plan.next_rotation else None,
        "concurrent_change": concurrent,
        "msg": ("(check mode) " if check_mode and changed else "") + msg,
    }
    for warning in warnings:
        if warn is not None:
            warn(warning)
    if diff:
        result["diff"] = {
            "before_header": ref, "after_header": ref,
            "before": _diff_view(result_plan.before.sorted()),
            "after": _diff_view(keyset),
        }
    if failure:
        result["_fail_msg"] = failure
    return result


def _diff_view(keyset: KeySet) -> str:
    lines = []
    for fact in keyset.facts():
        line = "%s %s %s" % (fact["state"], fact["kid"], fact["alg"])
        if fact["retire_at"]:
            line += " retire_at=%s" % fact["retire_at"]
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")
