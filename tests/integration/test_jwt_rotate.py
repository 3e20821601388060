"""jwt_rotate against a real kube-apiserver; PyJWT verifies tokens against the published key set."""

from __future__ import annotations

import base64
import json
import threading
import typing as t

import jwt
import pytest

from tests.harness.collection import run_module, run_playbook
from tests.harness.k8s import RESTRICTED_TOKEN, deployment, grant_read, wait_for

T0 = "2026-03-01T00:00:00Z"
SECRET = "jwt-signing-keys"
PUBLIC = "jwt-public-keys"


def when(days: float = 0, hours: float = 0, seconds: float = 0) -> str:
    import datetime

    moment = datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        days=days, hours=hours, seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def rotate(cluster, ns: str, token: t.Optional[str] = None, check_mode: bool = False, diff: bool = False,
           **args: t.Any) -> dict:
    params = dict(cluster.auth(token) if token else cluster.auth())
    params.update(namespace=ns, secret_name=SECRET)
    params.update(args)
    result = run_module("jwt_rotate", params, check_mode=check_mode, diff=diff)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def stored_keys(admin, ns: str, name: str = SECRET, key: str = "jwks.json") -> t.List[dict]:
    secret = admin.get("v1", "secrets", name, ns)
    return json.loads(base64.b64decode(secret["data"][key]))["keys"]


def active_jwk(admin, ns: str) -> dict:
    keys = [k for k in stored_keys(admin, ns) if k["state"] == "active"]
    assert len(keys) == 1, keys
    return keys[0]


def by_kid(admin, ns: str, kid: str) -> dict:
    return next(k for k in stored_keys(admin, ns) if k["kid"] == kid)


def sign(jwk: dict, claims: t.Optional[dict] = None) -> str:
    return jwt.encode(dict(claims or {"sub": "alice"}), jwt.PyJWK(jwk).key, algorithm=jwk["alg"],
                      headers={"kid": jwk["kid"]})


def published(admin, ns: str, name: str = PUBLIC) -> dict:
    return json.loads(admin.get("v1", "configmaps", name, ns)["data"]["jwks.json"])


def verifies(admin, ns: str, token: str) -> bool:
    """What a relying party does: pick the key by kid from the published set, then verify."""
    keyset = jwt.PyJWKSet.from_dict(published(admin, ns))
    kid = jwt.get_unverified_header(token)["kid"]
    try:
        key = keyset[kid]
    except KeyError:
        return False
    try:
        jwt.decode(token, key.key, algorithms=[key.algorithm_name])
    except jwt.InvalidTokenError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Rotation and grace period


def test_grace_period_keeps_old_tokens_valid_until_it_ends(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    common = dict(public_jwks={"name": PUBLIC}, rotate_after="30d", grace_period="24h")
    first = rotate(kube_cluster, ns, now=T0, **common)
    assert first["changed"] and first["rotated"] and not first.get("failed"), first
    assert [k["state"] for k in first["keys"]] == ["active"] and first["keys"][0]["alg"] == "RS256"
    old = active_jwk(kube_admin, ns)
    assert old["kid"] == first["active_kid"] and jwt.PyJWK(old).key.key_size == 3072
    assert first["public_jwks"]["kids"] == [old["kid"]]
    # Read the key set, create it, read and create the public set (at least).
    assert first["api_requests"] >= 4 and "diff" not in first
    before = sign(old)
    assert verifies(kube_admin, ns, before)

    again = rotate(kube_cluster, ns, now=when(days=29), **common)
    assert again["changed"] is False and again["rotated"] is False, again

    rotated = rotate(kube_cluster, ns, now=when(days=30), **common)
    assert rotated["changed"] and rotated["rotated"]
    assert rotated["active_kid"] != old["kid"]
    states = {k["kid"]: (k["state"], k["retire_at"]) for k in rotated["keys"]}
    assert states[old["kid"]] == ("retired", when(days=31))
    after = sign(active_jwk(kube_admin, ns))
    assert jwt.get_unverified_header(after)["kid"] == rotated["active_kid"]
    assert verifies(kube_admin, ns, before) and verifies(kube_admin, ns, after)

    within = rotate(kube_cluster, ns, now=when(days=30, hours=23), **common)
    assert within["changed"] is False and verifies(kube_admin, ns, before)

    expired = rotate(kube_cluster, ns, now=when(days=31), **common)
    assert expired["changed"] and expired["dropped"] == [old["kid"]] and not expired["rotated"]
    assert not verifies(kube_admin, ns, before)
    assert verifies(kube_admin, ns, after)
    assert published(kube_admin, ns)["keys"][0]["kid"] == rotated["active_kid"]


def test_prepublish_publishes_the_next_key_before_it_signs(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    common = dict(algorithm="ES256", public_jwks={"name": PUBLIC}, rotate_after="30d", prepublish="1d")
    first = rotate(kube_cluster, ns, now=T0, **common)
    staged = rotate(kube_cluster, ns, now=when(days=29, hours=1), **common)
    assert staged["changed"] and not staged["rotated"] and staged["active_kid"] == first["active_kid"]
    nxt = [k for k in staged["keys"] if k["state"] == "next"]
    assert len(nxt) == 1 and nxt[0]["activated"] is None
    assert nxt[0]["kid"] in staged["public_jwks"]["kids"]
    # Tokens signed by the next key would already verify: caches hold it before it signs.
    assert verifies(kube_admin, ns, sign(by_kid(kube_admin, ns, nxt[0]["kid"])))

    pending = rotate(kube_cluster, ns, now=when(days=30), **common)
    assert pending["changed"] is False and pending["active_kid"] == first["active_kid"]
    assert pending["next_rotation"] == when(days=30, hours=1)
    assert "less than prepublish ago" in json.dumps(pending.get("warnings")), pending

    done = rotate(kube_cluster, ns, now=when(days=30, hours=2), **common)
    assert done["rotated"] and done["active_kid"] == nxt[0]["kid"]
    assert {k["kid"]: k["state"] for k in done["keys"]} == {nxt[0]["kid"]: "active", first["active_kid"]: "retired"}


def test_revoke_all_invalidates_every_earlier_token_at_once(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    common = dict(algorithm="EdDSA", public_jwks={"name": PUBLIC})
    rotate(kube_cluster, ns, now=T0, **common)
    token_one = sign(active_jwk(kube_admin, ns))
    rotate(kube_cluster, ns, now=when(hours=1), force=True, **common)
    token_two = sign(active_jwk(kube_admin, ns))
    assert verifies(kube_admin, ns, token_one) and verifies(kube_admin, ns, token_two)

    result = rotate(kube_cluster, ns, now=when(hours=2), force=True, revoke="all", **common)
    assert result["changed"] and result["rotated"] and len(result["revoked"]) == 2
    assert len(result["keys"]) == 1 and result["keys"][0]["kid"] not in result["revoked"]
    assert not verifies(kube_admin, ns, token_one) and not verifies(kube_admin, ns, token_two)
    assert verifies(kube_admin, ns, sign(active_jwk(kube_admin, ns)))
    assert published(kube_admin, ns)["keys"] == [
        {k: v for k, v in active_jwk(kube_admin, ns).items() if k in ("kty", "crv", "x", "kid", "alg", "use")}]


def test_revoking_a_mistyped_kid_fails_names_the_kids_and_changes_nothing(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    common = dict(algorithm="ES256", public_jwks={"name": PUBLIC})
    rotate(kube_cluster, ns, now=T0, **common)
    rotate(kube_cluster, ns, now=when(hours=1), force=True, **common)
    kids = {k["kid"]: k["state"] for k in stored_keys(kube_admin, ns)}
    active = next(kid for kid, state in kids.items() if state == "active")
    retired = next(kid for kid, state in kids.items() if state == "retired")
    mistyped = retired[:-2] + ("xx" if not retired.endswith("xx") else "yy")
    version = kube_admin.get("v1", "secrets", SECRET, ns)["metadata"]["resourceVersion"]
    public_version = kube_admin.get("v1", "configmaps", PUBLIC, ns)["metadata"]["resourceVersion"]

    for check_mode in (True, False):
        result = rotate(kube_cluster, ns, check_mode=check_mode, now=when(hours=2), revoke=[mistyped], **common)
        assert result.get("failed") is True, result
        msg = result["msg"]
        assert "no key with kid %r" % mistyped in msg and "Secret/%s/%s" % (ns, SECRET) in msg
        assert "nothing was revoked" in msg
        assert "%s (active, ES256)" % active in msg and "%s (retired, ES256)" % retired in msg
        assert sorted(result["existing_kids"]) == sorted(kids)
        assert kube_admin.get("v1", "secrets", SECRET, ns)["metadata"]["resourceVersion"] == version
        assert kube_admin.get("v1", "configmaps", PUBLIC, ns)["metadata"]["resourceVersion"] == public_version

    # The real kid is revoked; asking again is recognised (changed=false), not taken for a typo.
    done = rotate(kube_cluster, ns, now=when(hours=2), revoke=[retired], **common)
    assert not done.get("failed") and done["changed"] and done["revoked"] == [retired], done
    assert retired not in [k["kid"] for k in published(kube_admin, ns)["keys"]]
    again = rotate(kube_cluster, ns, now=when(hours=3), revoke=[retired], **common)
    assert not again.get("failed") and again["changed"] is False, again
    assert "key %s was already revoked" % retired in again["msg"]


def test_prepublish_longer_than_rotate_after_is_refused(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    for check_mode in (True, False):
        result = rotate(kube_cluster, ns, check_mode=check_mode, now=T0, algorithm="ES256", rotate_after="7d",
                        prepublish="10d")
        assert result.get("failed") is True, result
        assert "prepublish 10d is longer than rotate_after 7d" in result["msg"], result["msg"]
    assert kube_admin.get("v1", "secrets", SECRET, ns, missing_ok=True) is None
    ok = rotate(kube_cluster, ns, now=T0, algorithm="ES256", rotate_after="7d", prepublish="7d")
    assert not ok.get("failed"), ok


def test_two_runs_started_together_make_exactly_one_new_key(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    first = rotate(kube_cluster, ns, now=T0)
    results: t.List[dict] = []

    def run() -> None:
        results.append(rotate(kube_cluster, ns, now=when(days=31)))

    threads = [threading.Thread(target=run) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(not r.get("failed") for r in results), results
    keys = stored_keys(kube_admin, ns)
    assert sorted(k["state"] for k in keys) == ["active", "retired"], keys
    new_kid = active_jwk(kube_admin, ns)["kid"]
    assert new_kid != first["active_kid"]
    assert {r["active_kid"] for r in results} == {new_kid}
    assert sum(1 for r in results if r["rotated"]) == 1, results


# ----------------------------------------------------------------------------------------------
# Shared secrets, other keys, check mode


def test_hs256_end_to_end_through_active_key_secret(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    common = dict(algorithm="HS256", grace_period="2h", active_key_secret={"name": "app-env", "key": "JWT_SECRET"})
    first = rotate(kube_cluster, ns, now=T0, **common)
    assert first["active_key_secret"] == {"name": "app-env", "namespace": ns, "key": "JWT_SECRET", "format": "raw",
                                          "kid": first["active_kid"], "changed": True}
    env_secret = base64.b64decode(kube_admin.get("v1", "secrets", "app-env", ns)["data"]["JWT_SECRET"])
    # The application signs with the string it reads from JWT_SECRET, knowing nothing of JWKs...
    token = jwt.encode({"sub": "bob"}, env_secret, algorithm="HS256")

    # ...and every verifier holding the private set verifies it (the first signs, all verify).
    def verify_with_set(tok: str) -> bool:
        for key in stored_keys(kube_admin, ns):
            try:
                jwt.decode(tok, jwt.PyJWK(key).key, algorithms=["HS256"])
                return True
            except jwt.InvalidTokenError:
                continue
        return False
    assert verify_with_set(token)

    rotated = rotate(kube_cluster, ns, now=when(hours=1), force=True, **common)
    new_env = base64.b64decode(kube_admin.get("v1", "secrets", "app-env", ns)["data"]["JWT_SECRET"])
    assert rotated["active_key_secret"]["changed"] and new_env != env_secret
    new_token = jwt.encode({"sub": "bob"}, new_env, algorithm="HS256")
    assert verify_with_set(token) and verify_with_set(new_token)
    rotate(kube_cluster, ns, now=when(hours=3, seconds=1), **common)
    assert not verify_with_set(token) and verify_with_set(new_token)

    refused = rotate(kube_cluster, ns, algorithm="HS256", public_jwks={"name": PUBLIC})
    assert refused.get("failed") and "public_jwks cannot be used with HS256" in refused["msg"]
    assert kube_admin.get("v1", "configmaps", PUBLIC, ns, missing_ok=True) is None


def test_other_secret_keys_stay_and_check_mode_changes_nothing(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    kube_admin.create("v1", "secrets", {"metadata": {"name": SECRET, "namespace": ns},
                                        "stringData": {"database-url": "postgres://db/app"}})
    preview = rotate(kube_cluster, ns, check_mode=True, diff=True, algorithm="ES256", now=T0)
    assert preview["changed"] and preview["rotated"], preview
    assert "active %s ES256" % preview["active_kid"] in preview["diff"]["after"]
    assert preview["diff"]["before"] == ""
    assert "jwks.json" not in (kube_admin.get("v1", "secrets", SECRET, ns).get("data") or {})

    made = rotate(kube_cluster, ns, algorithm="ES256", now=T0, diff=True)
    data = kube_admin.get("v1", "secrets", SECRET, ns)["data"]
    assert base64.b64decode(data["database-url"]) == b"postgres://db/app"
    version = kube_admin.get("v1", "secrets", SECRET, ns)["metadata"]["resourceVersion"]
    forced = rotate(kube_cluster, ns, check_mode=True, diff=True, algorithm="ES256", force=True, now=when(hours=1))
    assert forced["changed"] and forced["rotated"]
    assert "retired %s" % made["active_kid"] in forced["diff"]["after"]
    assert kube_admin.get("v1", "secrets", SECRET, ns)["metadata"]["resourceVersion"] == version


def test_a_value_that_is_not_a_key_set_is_never_overwritten(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    kube_admin.create("v1", "secrets", {"metadata": {"name": SECRET, "namespace": ns},
                                        "stringData": {"jwks.json": "s3cr3t-not-json"}})
    result = rotate(kube_cluster, ns, algorithm="ES256")
    assert result.get("failed") and "refusing to overwrite" in result["msg"]
    assert "Secret/%s/%s" % (ns, SECRET) in result["msg"] and "s3cr3t" not in json.dumps(result)


# ----------------------------------------------------------------------------------------------
# Restarts, RBAC, secrets in output


def test_restarted_deployment_gets_a_new_template_and_its_rollout_completes(
        kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    kube_admin.create("apps/v1", "deployments", deployment("token-issuer", ns, replicas=2))
    wait_for(lambda: (kube_admin.get("apps/v1", "deployments", "token-issuer", ns).get("status") or {})
             .get("availableReplicas") == 2, what="deployment available")
    # KWOK runs the new ReplicaSet's Pods as the controller creates them: the rollout completes by itself.
    common = dict(algorithm="ES256", restart=[{"name": "token-issuer"}], wait=True, wait_timeout=90)
    result = rotate(kube_cluster, ns, now=T0, **common)
    assert not result.get("failed"), result
    assert result["restarted"] == ["Deployment/%s/token-issuer" % ns]
    dep = kube_admin.get("apps/v1", "deployments", "token-issuer", ns)
    assert "kubectl.kubernetes.io/restartedAt" in dep["spec"]["template"]["metadata"]["annotations"]
    status = dep["status"]
    assert status["observedGeneration"] >= dep["metadata"]["generation"]
    assert status["updatedReplicas"] == status["availableReplicas"] == 2
    generation = dep["metadata"]["generation"]
    again = rotate(kube_cluster, ns, now=when(days=1), **common)
    assert again["changed"] is False and again["restarted"] == []
    assert kube_admin.get("apps/v1", "deployments", "token-issuer", ns)["metadata"]["generation"] == generation

    missing = rotate(kube_cluster, ns, algorithm="ES256", force=True, restart=[{"name": "nope"}])
    assert missing.get("failed") and "Deployment/%s/nope" % ns in missing["msg"] and "not found" in missing["msg"]
    assert active_jwk(kube_admin, ns)["kid"] == result["active_kid"]  # nothing written


def test_workloads_reading_the_env_secret_are_found_and_restarted(kube_cluster, kube_admin, kube_namespace):
    """The credential rotation modules' discovery: an app reading JWT_SECRET is restarted unlisted,
    and after its restart a token signed with the previous secret no longer verifies with what it reads."""
    ns = kube_namespace
    app = deployment("app", ns)
    app["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "JWT_SECRET", "valueFrom": {"secretKeyRef": {"name": "app-env", "key": "JWT_SECRET"}}}]
    kube_admin.create("apps/v1", "deployments", app)
    kube_admin.create("apps/v1", "deployments", deployment("unrelated", ns))
    common = dict(algorithm="HS256", active_key_secret={"name": "app-env", "key": "JWT_SECRET"}, wait=True,
                  wait_timeout=90)
    first = rotate(kube_cluster, ns, now=T0, **common)
    assert not first.get("failed") and first["restarted"] == ["Deployment/%s/app" % ns], first
    old_env = base64.b64decode(kube_admin.get("v1", "secrets", "app-env", ns)["data"]["JWT_SECRET"])
    token = jwt.encode({"sub": "carol"}, old_env, algorithm="HS256")

    second = rotate(kube_cluster, ns, now=when(hours=1), force=True, grace_period="2h", **common)
    assert not second.get("failed") and second["restarted"] == ["Deployment/%s/app" % ns], second
    new_env = base64.b64decode(kube_admin.get("v1", "secrets", "app-env", ns)["data"]["JWT_SECRET"])
    with pytest.raises(jwt.InvalidSignatureError):  # grace or not, the restarted app knows only the new secret
        jwt.decode(token, new_env, algorithms=["HS256"])
    assert kube_admin.get("apps/v1", "deployments", "unrelated", ns)["spec"]["template"]["metadata"].get(
        "annotations") is None


def test_rollout_that_never_completes_fails_after_writing_the_keys(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    # Its image never pulls (KWOK's imagepullbackoff fault): no Pod of the new template becomes ready.
    kube_admin.create("apps/v1", "deployments", deployment("stuck", ns, replicas=1,
                                                           image="example/app:imagepullbackoff"))
    result = rotate(kube_cluster, ns, algorithm="ES256", restart=[{"name": "stuck"}], wait=True, wait_timeout=3)
    assert result.get("failed") and "timed out after 3s waiting for the rollout of Deployment/%s/stuck" % ns in result["msg"]
    assert result["active_kid"] == active_jwk(kube_admin, ns)["kid"]
    assert result["restarted"] == ["Deployment/%s/stuck" % ns] and result["api_requests"] > 0


def test_rbac_limited_user_gets_a_clear_message(kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    denied = rotate(kube_cluster, ns, token=RESTRICTED_TOKEN, algorithm="ES256")
    assert denied.get("failed")
    assert "cannot get Secret/%s/%s: forbidden (403)" % (ns, SECRET) in denied["msg"], denied["msg"]
    assert "jwt_rotate needs get, create and update on secrets in namespace %s" % ns in denied["msg"]

    grant_read(kube_admin, ns, {"": ["secrets"]})
    read_only = rotate(kube_cluster, ns, token=RESTRICTED_TOKEN, algorithm="ES256")
    assert read_only.get("failed") and "cannot create Secret/%s/%s: forbidden" % (ns, SECRET) in read_only["msg"]
    # Check mode needs only read access.
    preview = rotate(kube_cluster, ns, token=RESTRICTED_TOKEN, algorithm="ES256", check_mode=True)
    assert not preview.get("failed") and preview["changed"], preview


def test_no_private_material_in_playbook_output_at_vvvv(kube_cluster, kube_admin, kube_namespace, tmp_path):
    ns = kube_namespace
    auth = kube_cluster.auth()
    playbook = tmp_path / "rotate.yml"
    tasks = []
    for alg, extra in (("RS256", {"public_jwks": {"name": PUBLIC}, "key_size": 2048,
                                  "active_key_secret": {"name": "app-pem", "key": "JWT_KEY"}}),
                       ("HS256", {"secret_name": "hmac-keys", "active_key_secret": {"name": "app-env", "key": "JWT_SECRET"}})):
        for force in (False, True):
            args = dict(auth, namespace=ns, secret_name=SECRET, algorithm=alg, force=force, grace_period="1h")
            args.update(extra)
            tasks.append({"name": "Rotate %s force=%s" % (alg, force), "runbook.ops.jwt_rotate": args,
                          "register": "out", "diff": True})
            tasks.append({"name": "Show", "ansible.builtin.debug": {"var": "out"}})
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = run_playbook(playbook, verbosity=4)
    assert proc.returncode == 0, proc.stdout[-3000:]
    output = proc.stdout
    secrets: t.List[str] = [auth["api_key"]]
    for name in (SECRET, "hmac-keys"):
        for key in stored_keys(kube_admin, ns, name):
            secrets += [str(key[m]) for m in ("d", "p", "q", "dp", "dq", "qi", "k") if m in key]
    for name, key in (("app-pem", "JWT_KEY"), ("app-env", "JWT_SECRET")):
        value = base64.b64decode(kube_admin.get("v1", "secrets", name, ns)["data"][key]).decode()
        secrets += [line for line in value.splitlines() if len(line) > 20 and "PRIVATE KEY" not in line] or [value]
    assert "PRIVATE KEY" not in output
    leaked = [s[:6] + "..." for s in secrets if s in output]
    assert not leaked, leaked
    assert "retired" in output and "active_kid" in output


def test_a_due_rotation_is_a_warning_finding_in_check_mode_with_the_signing_keys_age(
        kube_cluster, kube_admin, kube_namespace):
    ns = kube_namespace
    empty = rotate(kube_cluster, ns, check_mode=True, algorithm="ES256", rotate_after="30d", now=T0)
    assert empty["status"] == "warning" and empty["summary"]["warning"] == 1, empty
    [first] = empty["findings"]
    assert first["check"] == "signing_key_rotation" and first["object"] == "Secret/%s/%s" % (ns, SECRET)
    assert first["message"].startswith("rotation due") and first["details"]["active_since"] is None, first

    made = rotate(kube_cluster, ns, algorithm="ES256", rotate_after="30d", now=T0)
    assert made["status"] == "ok" and made["findings"][0]["message"].startswith("rotated"), made
    quiet = rotate(kube_cluster, ns, check_mode=True, algorithm="ES256", rotate_after="30d", now=when(days=10))
    assert quiet["status"] == "ok" and quiet["findings"][0]["message"].startswith("not due"), quiet
    due = rotate(kube_cluster, ns, check_mode=True, algorithm="ES256", rotate_after="30d", now=when(days=31))
    assert due["status"] == "warning", due
    # The age is the active key's: activated by the first run, at T0.
    assert due["findings"][0]["details"]["active_since"] == active_jwk(kube_admin, ns)["activated"], due
    assert "had been active since" in due["findings"][0]["message"]
