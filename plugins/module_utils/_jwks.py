# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The JWT signing key set and its rotation state machine (``next`` -> ``active`` -> ``retired`` ->
dropped), pure: :class:`KeySet` reads and writes the stored set, :func:`plan` decides its next state.

The stored set is a private JWK Set (RFC 7517) whose keys carry four extra members, which JWK
consumers ignore: ``state`` (``next``, ``active`` or ``retired``), ``created``, ``activated`` and
``retire_at`` (UTC, ISO 8601). The active key comes first ("the first signs, all verify").
Applying a plan to Kubernetes is :mod:`._jwt_rotate`'s job.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import re
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, isoformat, parse_time
from ansible_collections.runbook.ops.plugins.module_utils._jwk import (
    JWK, PRIVATE_MEMBERS, THUMBPRINT_MEMBERS, check_algorithm, generate_jwk, jwk_without_meta, public_jwk, rsa_bits,
    thumbprint,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import shown

STATES = ("next", "active", "retired")
_B64U = re.compile(r"^[A-Za-z0-9_-]*$")
# How many removed kids the set remembers, so that revoking a kid again is recognised (not a typo).
REMOVED_HISTORY = 100

Removal = t.Dict[str, str]
"""An entry of the set's ``removed`` history: ``kid``, ``removed`` (when) and ``reason``."""


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

    def __init__(self, jwk: JWK, state: str, created: datetime.datetime,
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

    def facts(self) -> JWK:
        """What may be shown: no key material."""
        return {"kid": self.kid, "alg": self.alg, "kty": self.jwk.get("kty"), "state": self.state,
                "created": isoformat(self.created),
                "activated": isoformat(self.activated) if self.activated else None,
                "retire_at": isoformat(self.retire_at) if self.retire_at else None}

    def to_json(self) -> JWK:
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

    def __init__(self, keys: t.Optional[t.List[Key]] = None, removed: t.Optional[t.List[Removal]] = None) -> None:
        self.keys: t.List[Key] = list(keys or [])
        self.removed: t.List[Removal] = list(removed or [])

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
        doc: t.Dict[str, t.Any] = {"keys": [k.to_json() for k in self.sorted().keys]}
        if self.removed:
            doc["removed"] = self.removed[-REMOVED_HISTORY:]
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    def was_removed(self, kid: str) -> t.Optional[Removal]:
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

    def facts(self) -> t.List[t.Dict[str, t.Any]]:
        return [k.facts() for k in self.sorted().keys]

    def public(self) -> JWK:
        """The public JWK Set: next, active and retired keys, HMAC secrets left out."""
        return {"keys": [public_jwk(k.jwk) for k in self.sorted().keys if not k.is_hmac]}


# ----------------------------------------------------------------------------------------------
# The rotation state machine


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the set rotates: durations in seconds; ``revoke`` holds kids, or ``all`` alone (then
    ``revoke_all`` is set and ``revoke`` is empty). Checked when made."""

    algorithm: str
    key_size: int
    rotate_after: float
    grace_period: float
    prepublish: float
    force: bool = False
    revoke: t.Sequence[str] = ()
    revoke_all: bool = dataclasses.field(init=False, default=False)

    def __post_init__(self) -> None:
        check_algorithm(self.algorithm, self.key_size)
        for name in ("rotate_after", "grace_period", "prepublish"):
            if getattr(self, name) < 0:
                raise RunbookError("%s must not be negative" % name)
        if self.rotate_after <= 0:
            raise RunbookError("rotate_after must be longer than 0 (it would rotate on every run); use force=true to "
                               "rotate now")
        if self.prepublish > self.rotate_after:
            raise RunbookError("prepublish %s is longer than rotate_after %s: a next key can be published at most "
                               "rotate_after before its rotation, so every rotation would wait for it and each key "
                               "would sign for longer than rotate_after; choose a prepublish of at most %s (about how "
                               "long verifiers cache the public key set)"
                               % (_human(self.prepublish), _human(self.rotate_after), _human(self.rotate_after)))
        revoke = [str(r).strip() for r in self.revoke if str(r).strip()]
        revoke_all = "all" in revoke
        if revoke_all and len(revoke) > 1:
            raise RunbookError("revoke: use either all or a list of kids, not both")
        object.__setattr__(self, "revoke_all", revoke_all)
        object.__setattr__(self, "revoke", () if revoke_all else tuple(revoke))


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
         generate: t.Callable[[str, int], JWK] = generate_jwk, where: str = "the key set") -> Plan:
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
    unknown = [kid for kid in policy.revoke if kid not in current.kids() and current.was_removed(kid) is None]
    if unknown:
        raise RunbookError("revoke: no key with %s %s in %s, so nothing was revoked and nothing changed; the set holds "
                           "%s. Give the kid exactly as the set has it (the kid header of the tokens signed with that "
                           "key), or revoke=all to remove every key"
                           % ("kid" if len(unknown) == 1 else "kids", ", ".join(shown(kid) for kid in unknown),
                              where, current.describe()),
                           existing_kids=current.kids(), unknown_kids=unknown)
    planner = _Planner(current, policy, now, generate)
    planner.revoke()
    planner.tidy()
    planner.rotate()
    return planner.finish()


class _Planner:
    """The steps of :func:`plan`, on a copy of the set (``keys``), recording into ``result``."""

    def __init__(self, current: KeySet, policy: Policy, now: datetime.datetime,
                 generate: t.Callable[[str, int], JWK]) -> None:
        self.current = current
        self.policy = policy
        self.now = now
        self.generate = generate
        self.stamp = isoformat(now)
        self.keys = KeySet([copy.deepcopy(k) for k in current.keys], copy.deepcopy(current.removed))
        self.result = Plan(KeySet([copy.deepcopy(k) for k in current.keys], copy.deepcopy(current.removed)), self.keys)

    def _remove(self, key: Key, reason: str) -> None:
        self.keys.keys.remove(key)
        (self.result.revoked if reason == "revoked" else self.result.dropped).append(key.kid)
        self.keys.removed.append({"kid": key.kid, "removed": self.stamp, "reason": reason})

    def _new_key(self) -> Key:
        jwk = self.generate(self.policy.algorithm, self.policy.key_size)
        self.result.generated.append(str(jwk["kid"]))
        return Key(jwk, "next", self.now)

    def _promote(self, key: Key, reason: str) -> None:
        old = self.keys.active
        if old is not None:
            old.state = "retired"
            old.retire_at = self.now + datetime.timedelta(seconds=self.policy.grace_period)
            self.result.events.append("key %s retired, verifies until %s" % (old.kid, isoformat(old.retire_at)))
        key.state = "active"
        key.activated = self.now
        key.retire_at = None
        if key not in self.keys.keys:
            self.keys.keys.append(key)
        self.result.rotated = True
        self.result.events.append("key %s (%s) active: %s" % (key.kid, key.alg, reason))

    def revoke(self) -> None:
        """Step 1: revoked keys are gone at once, without grace."""
        targets = set(self.keys.kids()) if self.policy.revoke_all else set(self.policy.revoke)
        for key in list(self.keys.keys):
            if key.kid in targets:
                self._remove(key, "revoked")
        if self.result.revoked:
            self.result.events.append("revoked %s" % ", ".join(self.result.revoked))
        for kid in self.policy.revoke:
            earlier = self.current.was_removed(kid) if kid not in self.current.kids() else None
            if earlier is not None:
                self.result.notes.append("key %s was already %s at %s" % (
                    kid, earlier.get("reason") or "removed", earlier.get("removed") or "an earlier run"))

    def tidy(self) -> None:
        """Steps 2 and 3: retired keys past their grace period are dropped; a set edited by hand gets
        one active key (the newest) and one next key; a next key of another algorithm is discarded."""
        for key in list(self.keys.keys):
            if key.state == "retired" and key.retire_at is not None and key.retire_at <= self.now:
                self._remove(key, "dropped")
        actives = sorted(self.keys.by_state("active"), key=lambda k: (k.activated or k.created).timestamp(), reverse=True)
        for extra in actives[1:]:
            extra.state, extra.retire_at = "retired", self.now + datetime.timedelta(seconds=self.policy.grace_period)
        for extra in sorted(self.keys.by_state("next"), key=lambda k: k.created.timestamp())[:-1]:
            self._remove(extra, "dropped")
        nxt = self.keys.next
        if nxt is not None and not nxt.matches(self.policy.algorithm, self.policy.key_size):
            self._remove(nxt, "dropped")
            self.result.events.append("next key %s (%s) discarded: algorithm is now %s"
                                      % (nxt.kid, nxt.alg, self.policy.algorithm))
        if self.result.dropped:
            self.result.events.insert(0, "dropped %s" % ", ".join(self.result.dropped))
        del self.keys.removed[:-REMOVED_HISTORY]

    def rotate(self) -> None:
        """Step 4: a new active key when there is none, when forced, or when the active one is due
        (with ``prepublish``: publish a next key first, activate it once it is that old)."""
        active, nxt, policy = self.keys.active, self.keys.next, self.policy
        if active is None:
            self._promote(nxt or self._new_key(), "the set had no active key")
            return
        if policy.force:
            self._promote(nxt or self._new_key(), "forced rotation")
            return
        if active.activated is None:
            raise AssertionError("an active key has its activation time")
        due_at = active.activated + datetime.timedelta(seconds=policy.rotate_after)
        mismatch = not active.matches(policy.algorithm, policy.key_size)
        due = mismatch or self.now >= due_at
        reason = ("algorithm or key size changed from %s to %s" % (active.alg, policy.algorithm) if mismatch
                  else "the active key was older than rotate_after")
        prepublish = datetime.timedelta(seconds=policy.prepublish)
        if policy.prepublish <= 0:
            if due:
                self._promote(nxt or self._new_key(), reason)
            return
        if not (due or self.now >= due_at - prepublish):
            return
        if nxt is None:
            nxt = self._new_key()
            self.keys.keys.append(nxt)
            self.result.events.append("key %s (%s) published as next; activates once it is %s old"
                                      % (nxt.kid, nxt.alg, _human(policy.prepublish)))
        if not due:
            return
        if nxt.created + prepublish <= self.now:
            self._promote(nxt, reason + ", next key published since %s" % isoformat(nxt.created))
        else:
            self.result.pending = True
            self.result.events.append("rotation due; next key %s activates at %s"
                                      % (nxt.kid, isoformat(nxt.created + prepublish)))

    def finish(self) -> Plan:
        active = self.keys.active
        if active is None or active.activated is None:
            raise AssertionError("a planned set always has an active key")
        self.result.next_rotation = active.activated + datetime.timedelta(seconds=self.policy.rotate_after)
        nxt = self.keys.next
        if nxt is not None:
            prepublish = datetime.timedelta(seconds=self.policy.prepublish)
            self.result.next_rotation = max(self.result.next_rotation, nxt.created + prepublish)
        self.result.after = self.keys.sorted()
        return self.result


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return "%d%s" % (seconds // size, unit)
    return "%gs" % seconds
