"""The pure part of jwt_rotate: keys, RFC 7638 kids, the next/active/retired state machine."""

from __future__ import annotations

import dataclasses
import datetime
import json
import typing as t

import jwt
import pytest
from joserfc.jwk import KeySet as JoseKeySet

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._jwk import (
    ALGORITHMS, export_active, generate_jwk, private_pem, public_jwk, thumbprint,
)
from ansible_collections.runbook.ops.plugins.module_utils._jwks import Key, KeySet, Policy, plan
from ansible_collections.runbook.ops.plugins.module_utils._jwt_rotate import RotateOptions
from ansible_collections.runbook.ops.plugins.module_utils._rollout import rollout_done
from tests.harness.tasks import validated

T0 = datetime.datetime(2026, 3, 1, 6, 0, tzinfo=datetime.timezone.utc)
HOUR = 3600.0
DAY = 86400.0
PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "k")


def at(**delta: float) -> datetime.datetime:
    return T0 + datetime.timedelta(**delta)


def size_for(alg: str) -> int:
    return 2048  # the smallest allowed RSA size keeps the tests fast


def options(**params: t.Any) -> RotateOptions:
    """Options as the module reads them: validated against its argument spec, defaults filled in."""
    return RotateOptions.from_params(validated("jwt_rotate", dict({"namespace": "auth", "secret_name": "keys"}, **params)))


def policy(algorithm: str, **seconds: t.Any) -> Policy:
    """The module's default policy for ``algorithm``, with some fields (durations in seconds) replaced."""
    return dataclasses.replace(options(algorithm=algorithm).policy, **seconds)


# ----------------------------------------------------------------------------------------------
# Keys and thumbprints


def test_thumbprint_matches_rfc7638_example():
    # RFC 7638 section 3.1
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5"
        "hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_generated_keys_sign_and_verify_with_pyjwt_and_kid_is_the_thumbprint(alg):
    jwk = generate_jwk(alg, size_for(alg))
    assert jwk["alg"] == alg and jwk["use"] == "sig"
    # An independent implementation computes the same thumbprint.
    assert JoseKeySet.import_key_set({"keys": [dict(jwk)]}).keys[0].thumbprint() == jwk["kid"]
    token = jwt.encode({"sub": "alice"}, jwt.PyJWK(jwk).key, algorithm=alg, headers={"kid": jwk["kid"]})
    verifier = jwt.PyJWK(jwk if alg.startswith("HS") else public_jwk(jwk)).key
    assert jwt.decode(token, verifier, algorithms=[alg])["sub"] == "alice"
    if not alg.startswith("HS"):
        public = public_jwk(jwk)
        assert not set(public) & set(PRIVATE)
        assert public["kid"] == thumbprint(public)


def test_rsa_key_size_is_honoured_and_small_sizes_are_refused():
    jwk = generate_jwk("RS256", 3072)
    assert jwt.PyJWK(jwk).key.key_size == 3072
    with pytest.raises(RunbookError, match="at least 2048"):
        generate_jwk("RS256", 1024)


def test_hmac_secret_is_printable_and_long_enough():
    for alg, length in (("HS256", 43), ("HS512", 86)):
        jwk = generate_jwk(alg)
        raw = export_active(jwk, "raw")
        assert len(raw) == length and raw.decode("ascii").isprintable()
        token = jwt.encode({"a": 1}, raw, algorithm=alg)
        assert jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[alg]) == {"a": 1}
    with pytest.raises(RunbookError, match="no public part"):
        public_jwk(generate_jwk("HS256"))
    with pytest.raises(RunbookError, match="no PEM form"):
        export_active(generate_jwk("HS256"), "pem")


@pytest.mark.parametrize("alg", ["RS256", "ES384", "EdDSA"])
def test_pem_export_signs_tokens_the_public_key_verifies(alg):
    jwk = generate_jwk(alg, 2048)
    pem = private_pem(jwk)
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    token = jwt.encode({"x": 1}, pem, algorithm=alg)
    assert jwt.decode(token, jwt.PyJWK(public_jwk(jwk)).key, algorithms=[alg]) == {"x": 1}
    with pytest.raises(RunbookError, match="raw is only for"):
        export_active(jwk, "raw")
    assert json.loads(export_active(jwk, "jwk"))["kid"] == jwk["kid"]


# ----------------------------------------------------------------------------------------------
# Stored sets


def test_parse_refuses_what_is_not_a_jwk_set():
    with pytest.raises(RunbookError, match="not JSON; refusing to overwrite"):
        KeySet.parse("c2VjcmV0", T0, DAY)
    with pytest.raises(RunbookError, match="not a JWK Set"):
        KeySet.parse('{"jwt-secret": "x"}', T0, DAY)
    with pytest.raises(RunbookError, match="unknown state"):
        jwk = generate_jwk("ES256")
        KeySet.parse(json.dumps({"keys": [dict(jwk, state="old", created="2026-01-01T00:00:00Z")]}), T0, DAY)
    assert KeySet.parse(None, T0, DAY).keys == []
    assert KeySet.parse("", T0, DAY).keys == []


def test_foreign_jwk_set_is_adopted_first_key_active():
    one, two = generate_jwk("ES256"), generate_jwk("ES256")
    del one["kid"]
    keys = KeySet.parse(json.dumps({"keys": [one, two]}), T0, DAY)
    assert keys.active.kid == thumbprint(one)
    assert keys.by_state("retired")[0].kid == two["kid"]
    assert keys.by_state("retired")[0].retire_at == at(days=1)


def test_dump_parse_round_trip_is_stable_and_active_first():
    result = plan(KeySet(), policy("ES256", prepublish=HOUR, rotate_after=DAY), T0)
    later = plan(result.after, policy("ES256", prepublish=HOUR, rotate_after=DAY), at(hours=23))
    text = later.after.dump()
    again = KeySet.parse(text, at(hours=23), DAY)
    assert again.dump() == text
    assert [k["state"] for k in json.loads(text)["keys"]] == ["active", "next"]


# ----------------------------------------------------------------------------------------------
# The state machine


def es(**kwargs) -> Policy:
    kwargs.setdefault("rotate_after", 30 * DAY)
    kwargs.setdefault("grace_period", DAY)
    return policy("ES256", **kwargs)


def test_first_run_makes_one_active_key_and_second_run_changes_nothing():
    first = plan(KeySet(), es(), T0)
    assert first.changed and first.rotated and len(first.after.keys) == 1
    assert first.after.active.activated == T0
    assert first.next_rotation == at(days=30)
    second = plan(first.after, es(), at(days=29))
    assert not second.changed and not second.rotated
    assert second.after.dump() == first.after.dump()


def test_due_rotation_retires_old_key_for_the_grace_period_then_drops_it():
    first = plan(KeySet(), es(), T0).after
    old = first.active.kid
    rotated = plan(first, es(), at(days=30))
    assert rotated.rotated and rotated.after.active.kid != old
    retired = rotated.after.by_state("retired")
    assert [k.kid for k in retired] == [old] and retired[0].retire_at == at(days=31)
    assert not plan(rotated.after, es(), at(days=30, hours=23)).changed
    dropped = plan(rotated.after, es(), at(days=31))
    assert dropped.changed and not dropped.rotated and dropped.dropped == [old]
    assert dropped.after.kids() == [rotated.after.active.kid]


def test_prepublish_publishes_next_before_activating_it():
    prepublishing = es(prepublish=2 * DAY)
    first = plan(KeySet(), prepublishing, T0).after
    assert not plan(first, prepublishing, at(days=27, hours=23)).changed
    step = plan(first, prepublishing, at(days=28))
    assert step.changed and not step.rotated and step.after.next is not None
    nxt = step.after.next.kid
    assert step.after.active.kid == first.active.kid
    # Due, but the next key is not yet old enough: nothing happens, the run says so.
    created_late = plan(first, prepublishing, at(days=29, hours=12))
    pending = plan(created_late.after, prepublishing, at(days=30))
    assert pending.pending and not pending.changed and pending.next_rotation == at(days=31, hours=12)
    # Old enough and due: it becomes active, the old key retires.
    done = plan(step.after, prepublishing, at(days=30))
    assert done.rotated and done.after.active.kid == nxt and done.after.next is None
    assert [k.kid for k in done.after.by_state("retired")] == [first.active.kid]


def test_force_rotates_now_and_prefers_the_published_next_key():
    prepublishing = es(prepublish=2 * DAY)
    first = plan(KeySet(), prepublishing, T0).after
    forced = plan(first, es(force=True, prepublish=2 * DAY), at(hours=1))
    assert forced.rotated and forced.generated == [forced.after.active.kid]
    staged = plan(first, prepublishing, at(days=28)).after
    forced = plan(staged, es(force=True, prepublish=2 * DAY), at(days=28, minutes=1))
    assert forced.rotated and forced.after.active.kid == staged.next.kid and forced.generated == []


def test_revoke_all_with_force_leaves_one_new_key():
    first = plan(KeySet(), es(), T0).after
    rotated = plan(first, es(force=True), at(hours=1)).after
    assert len(rotated.keys) == 2
    result = plan(rotated, es(force=True, revoke=["all"]), at(hours=2))
    assert sorted(result.revoked) == sorted(rotated.kids())
    assert len(result.after.keys) == 1 and result.after.active.kid not in rotated.kids()


def test_revoking_the_active_key_promotes_next():
    prepublishing = es(prepublish=2 * DAY)
    staged = plan(plan(KeySet(), prepublishing, T0).after, prepublishing, at(days=28)).after
    result = plan(staged, es(prepublish=2 * DAY, revoke=[staged.active.kid]), at(days=28, hours=1))
    assert result.revoked == [staged.active.kid] and result.after.active.kid == staged.next.kid
    assert result.after.by_state("retired") == []
    with pytest.raises(RunbookError, match="either all or a list"):
        es(revoke=["all", "abc"])


def test_revoking_an_unknown_kid_is_refused_and_names_the_kids_there_are():
    first = plan(KeySet(), es(), T0).after
    rotated = plan(first, es(force=True), at(hours=1)).after
    mistyped = rotated.active.kid[:-1] + ("A" if rotated.active.kid[-1] != "A" else "B")
    with pytest.raises(RunbookError) as caught:
        plan(rotated, es(revoke=[mistyped]), at(hours=2), where="key jwks.json of Secret/auth/keys")
    msg = caught.value.msg
    assert "no key with kid %r in key jwks.json of Secret/auth/keys" % mistyped in msg
    assert "nothing was revoked" in msg
    for key in rotated.keys:
        assert "%s (%s, ES256)" % (key.kid, key.state) in msg
    assert caught.value.details["existing_kids"] == rotated.kids()
    # One unknown kid among known ones: still nothing at all is revoked.
    with pytest.raises(RunbookError, match="no key with kid 'nope'"):
        plan(rotated, es(revoke=[rotated.active.kid, "nope"]), at(hours=2))
    with pytest.raises(RunbookError, match="the set holds no key"):
        plan(KeySet(), es(revoke=["abc"]), T0)


def test_revoking_the_same_kid_again_changes_nothing_and_says_so():
    first = plan(KeySet(), es(), T0).after
    rotated = plan(first, es(force=True), at(hours=1)).after
    old = rotated.by_state("retired")[0].kid
    revoked = plan(rotated, es(revoke=[old]), at(hours=2))
    assert revoked.revoked == [old] and revoked.changed
    stored = KeySet.parse(revoked.after.dump(), at(hours=3), DAY)
    assert stored.was_removed(old) == {"kid": old, "removed": "2026-03-01T08:00:00Z", "reason": "revoked"}
    again = plan(stored, es(revoke=[old]), at(hours=3))
    assert not again.changed and again.revoked == []
    assert again.notes == ["key %s was already revoked at 2026-03-01T08:00:00Z" % old]
    # A key dropped at the end of its grace period is also known as removed.
    dropped = plan(first, es(force=True, grace_period=HOUR), at(hours=1)).after
    gone = plan(dropped, es(grace_period=HOUR), at(hours=3))
    assert gone.dropped and not plan(gone.after, es(revoke=gone.dropped), at(hours=4)).changed


def test_removed_history_is_bounded():
    keys = plan(KeySet(), es(), T0).after
    for hour in range(1, 130):
        keys = plan(keys, es(force=True, grace_period=0), at(hours=hour)).after
    assert len(json.loads(keys.dump())["removed"]) == 100
    assert [k.state for k in keys.sorted().keys] == ["active", "retired"]


def test_prepublish_longer_than_rotate_after_is_refused():
    with pytest.raises(RunbookError, match="prepublish 2d is longer than rotate_after 1d"):
        policy("ES256", rotate_after=DAY, prepublish=2 * DAY)
    assert policy("ES256", rotate_after=DAY, prepublish=DAY).prepublish == DAY
    with pytest.raises(RunbookError, match="rotate_after must be longer than 0"):
        policy("ES256", rotate_after=0)


def test_rsa_key_size_is_bounded():
    with pytest.raises(RunbookError, match="too small"):
        policy("RS256", key_size=1024)
    with pytest.raises(RunbookError, match="too large for RS256: at most 8192"):
        policy("RS256", key_size=100000)


def test_a_damaged_stored_key_is_refused_not_crashed_on():
    jwk = generate_jwk("ES256")
    for damaged in (dict(jwk, x=12345), dict(jwk, d="not base64!"), dict(jwk, kid=["a"]), dict(jwk, alg=7)):
        with pytest.raises(RunbookError, match="damaged"):
            KeySet.parse(json.dumps({"keys": [dict(damaged, state="active")]}), T0, DAY)


@pytest.mark.parametrize("option, value, words", [
    ("namespace", "../kube-system", "not a valid Kubernetes name"),
    ("namespace", "Auth", "not a valid Kubernetes name"),
    ("secret_name", "a/b", "not a valid Kubernetes name"),
    ("secret_name", "x" * 300, "not a valid Kubernetes name"),
    ("secret_key", "../jwks.json", "not a valid Secret or ConfigMap key"),
    ("secret_key", "a\x00b", "control character"),
    ("key_size", -1, "key_size must be at least 1"),
    ("rotate_after", "0", "rotate_after must be a duration longer than 0s"),
    ("rotate_after", "-5d", "not a duration"),
    ("rotate_after", "1e308", "at most 36500d"),
    ("grace_period", "nan", "grace_period must be a duration"),
    ("prepublish", "inf", "prepublish must be a duration"),
    ("wait_timeout", 0, "wait_timeout must be at least 1"),
    ("revoke", ["kid\nx"], "control character"),
    ("now", "9999-12-31T23:59:59Z", "out of range"),
    ("public_jwks", {"name": "..", "kind": "ConfigMap"}, "public_jwks.name"),
    ("active_key_secret", {"name": "ok", "key": "a/b"}, "active_key_secret.key"),
    ("restart", [{"name": "Web", "kind": "Deployment"}], "restart[0].name"),
])
def test_hostile_options_are_refused_before_anything_is_read(option, value, words):
    with pytest.raises(RunbookError, match=words.replace("[", "\\[").replace(".", "\\.")):
        options(**{"algorithm": "ES256", option: value})


def test_algorithm_change_rotates_and_discards_a_next_key_of_the_old_algorithm():
    prepublishing = es(prepublish=2 * DAY)
    staged = plan(plan(KeySet(), prepublishing, T0).after, prepublishing, at(days=28)).after
    result = plan(staged, policy("EdDSA", rotate_after=30 * DAY, grace_period=DAY), at(days=28, hours=1))
    assert staged.next.kid in result.dropped
    assert result.rotated and result.after.active.alg == "EdDSA"
    assert result.after.by_state("retired")[0].alg == "ES256"


def test_public_set_holds_next_active_retired_without_private_members_or_hmac():
    prepublishing = es(prepublish=2 * DAY)
    first = plan(KeySet(), prepublishing, T0).after
    rotated = plan(plan(first, es(force=True, grace_period=40 * DAY), at(days=1)).after, prepublishing, at(days=29)).after
    states = [k.state for k in rotated.sorted().keys]
    assert states == ["active", "next", "retired"]
    hmac = Key(generate_jwk("HS256"), "retired", T0, T0, at(days=40))
    rotated.keys.append(hmac)
    public = rotated.public()
    assert [k["kid"] for k in public["keys"]] == [k.kid for k in rotated.sorted().keys if k.kid != hmac.kid]
    for key in public["keys"]:
        assert not set(key) & set(PRIVATE + ("state", "created"))


def test_two_active_keys_written_by_hand_are_repaired():
    one, two = generate_jwk("ES256"), generate_jwk("ES256")
    text = json.dumps({"keys": [dict(one, state="active", created="2026-02-01T00:00:00Z"),
                                dict(two, state="active", created="2026-02-20T00:00:00Z")]})
    result = plan(KeySet.parse(text, T0, DAY), es(), T0)
    assert result.after.active.kid == two["kid"]
    assert [k.kid for k in result.after.by_state("retired")] == [one["kid"]]


def test_negative_durations_are_refused():
    with pytest.raises(RunbookError, match="grace_period must not be negative"):
        policy("ES256", grace_period=-1)


# ----------------------------------------------------------------------------------------------
# Rollout status (what kubectl rollout status checks)


def deployment_obj(generation: int = 2, observed: int = 2, replicas: int = 2, updated: int = 2, total: int = 2,
                   available: int = 2, conditions: t.Optional[list] = None) -> dict:
    return {"metadata": {"name": "api", "namespace": "auth", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                       "availableReplicas": available, "conditions": conditions or []}}


def test_deployment_rollout_status():
    assert rollout_done("Deployment", deployment_obj(), 2) == (True, "")
    assert rollout_done("Deployment", deployment_obj(observed=1), 2)[0] is False
    assert rollout_done("Deployment", deployment_obj(updated=1), 2) == (False, "1 of 2 new replicas updated")
    assert rollout_done("Deployment", deployment_obj(total=3), 2) == (False, "1 old replicas pending termination")
    assert rollout_done("Deployment", deployment_obj(available=1), 2) == (False, "1 of 2 updated replicas available")
    stuck = deployment_obj(updated=1, conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                                   "message": "ReplicaSet api-2 has timed out progressing."}])
    with pytest.raises(RunbookError, match="rollout of Deployment/auth/api failed: ReplicaSet api-2 has timed out"):
        rollout_done("Deployment", stuck, 2)


def test_statefulset_and_daemonset_rollout_status():
    sts = {"spec": {"replicas": 2}, "status": {"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 1,
                                               "currentRevision": "a", "updateRevision": "b"}}
    assert rollout_done("StatefulSet", sts, 3) == (False, "1 of 2 replicas updated")
    sts["status"]["currentRevision"] = "b"
    assert rollout_done("StatefulSet", sts, 3) == (True, "")
    ds = {"spec": {}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                                 "numberAvailable": 2}}
    assert rollout_done("DaemonSet", ds, 1) == (False, "2 of 3 updated pods available")
    ds["status"]["numberAvailable"] = 3
    assert rollout_done("DaemonSet", ds, 1) == (True, "")


# ----------------------------------------------------------------------------------------------
# Options


def test_options_take_their_defaults_from_the_argument_spec():
    opts = options()
    assert (opts.policy.algorithm, opts.policy.key_size) == ("RS256", 3072)
    assert (opts.policy.rotate_after, opts.policy.grace_period, opts.policy.prepublish) == (30 * DAY, DAY, 0.0)
    assert opts.secret_key == "jwks.json" and opts.wait_timeout == 300 and opts.public_jwks is None
    copies = options(algorithm="HS256", active_key_secret={"name": "env"}, restart=[{"name": "api", "namespace": "web"}])
    assert copies.active_format == "raw" and copies.active_key_secret.key == "jwt-secret"
    assert copies.active_key_secret.namespace == "auth"
    assert [w.ref for w in copies.restart] == ["Deployment/web/api"]
    assert options(public_jwks={"name": "pub"}).public_jwks.kind == "ConfigMap"


def test_publishing_an_hmac_key_is_refused_before_anything_is_read():
    with pytest.raises(RunbookError, match="public_jwks cannot be used with HS256"):
        options(algorithm="HS256", public_jwks={"name": "pub"})
    with pytest.raises(RunbookError, match="format pem is only for asymmetric keys"):
        options(algorithm="HS512", active_key_secret={"name": "env", "format": "pem"})
