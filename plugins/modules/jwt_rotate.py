#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: jwt_rotate
short_description: Rotate JWT signing keys kept in a Kubernetes Secret, with a grace period and an emergency revoke
version_added: 0.1.0
description:
  - Keeps a private JWK Set in one key of a Kubernetes Secret and moves its keys through the states
    V(next) (published, not yet signing), V(active) (signs; always exactly one) and V(retired) (still
    verifies until its C(retire_at)), then drops them.
  - Rotates when the active key is older than O(rotate_after), when O(force) is set, or when the active key
    has another algorithm or RSA size than asked for. The outgoing key stays for verification for
    O(grace_period); O(revoke) removes keys at once, without grace.
  - Each key's C(kid) is its RFC 7638 thumbprint. Can publish the public keys (O(public_jwks)), write the
    active key where an application reads it from an environment variable (O(active_key_secret)), and
    restart workloads the way C(kubectl rollout restart) does (O(restart)).
  - The Secret is written with the C(resourceVersion) it was read with, so two runs started together make
    one rotation; the run that loses re-reads the Secret and reports what it found.
  - No private key material appears in any result, diff, warning or error.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: Reports the keys and states a run would produce (with their kids) and writes nothing.
  diff_mode:
    support: full
    description: Shows the kids, algorithms and states before and after; never key material.
options:
  namespace:
    description: Namespace of the Secret holding the key set, and the default namespace of the other objects.
    type: str
    required: true
  secret_name:
    description: Name of the Secret holding the key set; it is created when absent.
    type: str
    required: true
  secret_key:
    description:
      - The key of the Secret that holds the private JWK Set this module manages. Other keys of the Secret
        are left untouched.
      - A value that is not a JWK Set is never overwritten (the task fails). A JWK Set written by another
        tool is adopted; its first key becomes the active key.
    type: str
    default: jwks.json
  algorithm:
    description:
      - Signing algorithm of new keys. V(EdDSA) makes Ed25519 keys.
      - V(HS256) and V(HS512) make shared secrets (random text of 43 or 86 characters, usable as an environment
        variable); they are never published.
    type: str
    choices: [RS256, RS384, RS512, PS256, ES256, ES384, EdDSA, HS256, HS512]
    default: RS256
  key_size:
    description: Size in bits of new RSA keys, from 2048 to 8192. Ignored for other algorithms.
    type: int
    default: 3072
  rotate_after:
    description:
      - Rotate when the active key has been active for longer than this duration (V(30d), V(12h), V(90m)).
      - It must be longer than zero and at most 100 years; O(force) rotates at once.
    type: str
    default: 30d
  force:
    description:
      - Rotate now, whatever the age of the active key. A published V(next) key is activated; otherwise a new
        key is made and activated at once (O(prepublish) is not waited for).
      - Every run with O(force=true) rotates, so it is not idempotent.
    type: bool
    default: false
  grace_period:
    description:
      - How long a retired key is kept (and published) for verification after it stopped signing.
      - It must cover the longest lifetime of a token signed with it, plus the clock skew verifiers allow,
        plus how long verifiers cache the public key set; shorter makes valid tokens fail.
    type: str
    default: 24h
  prepublish:
    description:
      - When above zero, a rotation is done in two steps. A run at most this long before the rotation is due
        adds a V(next) key, which is published but does not sign; a run after the rotation is due, once that
        key is at least this old, makes it active. Caches of the public set then already hold it when the
        first token signed with it arrives.
      - V(0) makes and activates a new key in one run.
      - It must not be longer than O(rotate_after), or the task fails. The next key could not be published
        that long before its rotation, so every rotation would wait for it and keys would sign for longer than
        O(rotate_after).
    type: str
    default: '0'
  revoke:
    description:
      - Kids to remove at once, without grace period, or V(all) to remove every key.
      - When the active key is revoked, a published V(next) key becomes active, otherwise a new key is made.
        Tokens signed with a revoked key stop verifying as soon as verifiers reload the set.
      - The compromise runbook is O(force=true) with O(revoke=all), which leaves a single brand-new key.
      - A kid that is not in the set fails the task before anything changes, and the message lists the kids
        the set holds, so that a mistyped kid is never taken for a revoked key. The set remembers the last 100
        kids it removed (member C(removed)), so revoking the same kid again reports RV(changed=false).
    type: list
    elements: str
    default: []
  public_jwks:
    description:
      - Publish the public keys (V(next), V(active) and V(retired) within grace) as a JWK Set in a ConfigMap
        or Secret, created when absent; other keys of that object are left untouched.
      - Not allowed with V(HS256) or V(HS512); HMAC keys already in the set are never published.
    type: dict
    suboptions:
      kind:
        description: Kind of the object.
        type: str
        choices: [ConfigMap, Secret]
        default: ConfigMap
      name:
        description: Name of the object.
        type: str
        required: true
      key:
        description: Key of the object that holds the JWK Set.
        type: str
        default: jwks.json
      namespace:
        description: Namespace of the object; O(namespace) when not set.
        type: str
  active_key_secret:
    description:
      - Also write the active signing key alone into a key of a Secret (created when absent), the form an
        application reads from an environment variable such as C(JWT_SECRET).
    type: dict
    suboptions:
      name:
        description: Name of the Secret. May be O(secret_name) with another key.
        type: str
        required: true
      key:
        description: Key of the Secret.
        type: str
        default: jwt-secret
      format:
        description:
          - V(pem) is the private key as unencrypted PKCS#8 PEM (asymmetric algorithms), V(raw) the shared
            secret itself (HMAC algorithms), V(jwk) the private JWK with its C(kid).
          - Default V(raw) for HMAC algorithms, V(pem) otherwise.
        type: str
        choices: [pem, jwk, raw]
      namespace:
        description: Namespace of the Secret; O(namespace) when not set.
        type: str
  restart:
    description:
      - Workloads restarted (new pod template, as C(kubectl rollout restart) does) when this run changed the
        key set, the published set or the active key secret. They are checked to exist before anything is
        written.
      - Besides these, every Deployment, StatefulSet and DaemonSet whose pod template references the key set's
        Secret or the O(active_key_secret) Secret (C(env), C(envFrom), volumes, projected volumes) is
        restarted after them, found the way M(runbook.ops.pg_credential_rotate) finds its consumers.
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description: Kind of the workload.
        type: str
        choices: [Deployment, StatefulSet, DaemonSet]
        default: Deployment
      name:
        description: Name of the workload.
        type: str
        required: true
      namespace:
        description: Namespace of the workload; O(namespace) when not set.
        type: str
  wait:
    description:
      - Wait until the restarted workloads have rolled out (all replicas updated and available, old ones gone).
      - When the wait times out, the task fails after returning every result; the keys stay rotated.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait for all the rollouts together, from 1 to 86400.
    type: int
    default: 300
  now:
    description:
      - The time to act at, as ISO 8601 (V(2026-03-01T06:00:00Z)); the current time when not set.
        For tests and reproducible runs.
    type: str
notes:
  - An application that reads one HMAC secret from an environment variable (C(JWT_SECRET) through
    O(active_key_secret)) knows only the key it was started with. Tokens signed with the old secret stop
    verifying as soon as that consumer restarts (users are logged out), and during the rollout old and new
    Pods reject each other's tokens; O(grace_period) keeps the retired key in the key set, which such an
    application never reads. Rotate in a quiet hour with short token lifetimes, or let the application
    verify against every key of the key set.
  - The Secret's key set is a standard private JWK Set; each key carries the extra members C(state),
    C(created), C(activated) and C(retire_at), and the set the member C(removed) (the kids revoked or dropped
    lately, with when and why), which JWK libraries ignore. The active key comes first.
  - A run that changes nothing (the active key is younger than O(rotate_after) and no retired key has passed
    its C(retire_at)) reports RV(changed=false).
  - In check mode, the kid of a key that would be made is the kid of a key made and thrown away; the real
    run makes another one.
  - Needs get, create and update on Secrets (and ConfigMaps for O(public_jwks)) in the namespaces used,
    get and patch on the workloads in O(restart) and on the ones found, and list on Deployments,
    StatefulSets, DaemonSets and CronJobs in the namespaces of the Secrets written (without it, a warning
    and only O(restart) is restarted).
seealso:
  - name: RFC 7638 JSON Web Key (JWK) Thumbprint
    description: How the key ids are computed.
    link: https://www.rfc-editor.org/rfc/rfc7638
"""

EXAMPLES = r"""
- name: Rotate the signing key monthly, publish the public keys, restart the issuer
  runbook.ops.jwt_rotate:
    namespace: auth
    secret_name: jwt-signing-keys
    algorithm: ES256
    rotate_after: 30d
    grace_period: 26h  # 24h token lifetime + clock skew + JWKS cache time
    prepublish: 6h
    public_jwks:
      name: jwt-public-keys
    restart:
      - name: token-issuer
    wait: true
  register: jwt

- name: Show the published key ids
  ansible.builtin.debug:
    msg: "active {{ jwt.active_kid }}; published {{ jwt.public_jwks.kids }}"

- name: Compromise runbook, invalidate every token and leave a single new key
  runbook.ops.jwt_rotate:
    namespace: auth
    secret_name: jwt-signing-keys
    algorithm: ES256
    force: true
    revoke: all
    public_jwks:
      name: jwt-public-keys
    restart:
      - name: token-issuer
      - name: auth-service

- name: Shared secret for an application that reads JWT_SECRET from the environment
  runbook.ops.jwt_rotate:
    namespace: auth
    secret_name: jwt-signing-keys
    algorithm: HS256
    rotate_after: 7d
    grace_period: 2h
    active_key_secret:
      name: auth-service-env
      key: JWT_SECRET
    restart:
      - name: auth-service
"""

RETURN = r"""
changed:
  description: Whether the key set, the published set or the active key secret changed (or would, in check mode).
  returned: always
  type: bool
  sample: true
rotated:
  description: Whether another key became the active key.
  returned: always
  type: bool
  sample: true
active_kid:
  description: Kid (RFC 7638 thumbprint) of the key that signs.
  returned: always
  type: str
  sample: 8mB7m2S6b4c0vYQkQk2F3JtQ0s7c9W6e0s3Kq8lZ1Yc
keys:
  description: The keys of the set after this run, active first; public facts only.
  returned: always
  type: list
  elements: dict
  contains:
    kid:
      description: The key id, its RFC 7638 thumbprint.
      type: str
    alg:
      description: Signing algorithm.
      type: str
      sample: RS256
    kty:
      description: JWK key type (V(RSA), V(EC), V(OKP), V(oct)).
      type: str
      sample: RSA
    state:
      description: V(next) (published, not signing yet), V(active) (signs) or V(retired) (verifies until RV(keys[].retire_at)).
      type: str
      sample: active
    created:
      description: When the key was made (UTC).
      type: str
      sample: "2026-03-01T06:00:00Z"
    activated:
      description: When the key started signing; null for a V(next) key.
      type: str
      sample: "2026-03-01T06:00:00Z"
    retire_at:
      description: When a V(retired) key is dropped; null for other states.
      type: str
      sample: "2026-03-02T06:00:00Z"
revoked:
  description: Kids removed by O(revoke) in this run.
  returned: always
  type: list
  elements: str
  sample: []
dropped:
  description: Kids removed because their grace period ended (or a V(next) key of another algorithm).
  returned: always
  type: list
  elements: str
  sample: []
public_jwks:
  description: Where the public set was published and what it holds; null without O(public_jwks).
  returned: always
  type: dict
  contains:
    kind:
      description: V(ConfigMap) or V(Secret).
      type: str
    name:
      description: Name of the object.
      type: str
    namespace:
      description: Namespace of the object.
      type: str
    key:
      description: Key of the object holding the set.
      type: str
    changed:
      description: Whether the published set changed.
      type: bool
    kids:
      description: Kids of the published keys.
      type: list
      elements: str
    jwks:
      description: The published public JWK Set.
      type: dict
active_key_secret:
  description: Where the active key was written (never the key itself); null without O(active_key_secret).
  returned: always
  type: dict
  contains:
    name:
      description: Name of the Secret.
      type: str
    namespace:
      description: Namespace of the Secret.
      type: str
    key:
      description: Key of the Secret.
      type: str
    format:
      description: V(pem), V(jwk) or V(raw).
      type: str
    kid:
      description: Kid of the key written.
      type: str
    changed:
      description: Whether the value changed.
      type: bool
restarted:
  description: Workloads restarted (or that would be, in check mode), as C(Kind/namespace/name).
  returned: always
  type: list
  elements: str
  sample: [Deployment/auth/token-issuer]
secret:
  description: The Secret holding the key set, as C(Secret/namespace/name).
  returned: always
  type: str
  sample: Secret/auth/jwt-signing-keys
next_rotation:
  description: When the next rotation is due (UTC), assuming the module runs then.
  returned: always
  type: str
  sample: "2026-03-31T06:00:00Z"
concurrent_change:
  description: Whether another actor changed the Secret while this run was updating it (this run then re-read it).
  returned: always
  type: bool
  sample: false
status:
  description: The worst severity of RV(findings) - V(warning) when check mode finds a rotation due, else V(ok).
  returned: success
  type: str
  sample: warning
summary:
  description: Count of RV(findings) per severity.
  returned: success
  type: dict
  sample: {critical: 0, unknown: 0, warning: 1, info: 0, ok: 0}
findings:
  description:
    - One finding, check V(signing_key_rotation), saying whether a rotation was due when the task started, so a daily
      check in check mode reports a due rotation (V(warning)) with the age of the key that signs today.
    - In a run that rotates, the finding is V(ok) with the message V(rotated).
  returned: success
  type: list
  elements: dict
  contains:
    severity:
      description: V(warning) (rotation due, check mode) or V(ok).
      type: str
      sample: warning
    check:
      description: V(signing_key_rotation).
      type: str
      sample: signing_key_rotation
    object:
      description: The Secret, as C(Secret/namespace/name).
      type: str
      sample: Secret/auth/jwt-signing-keys
    message:
      description: V(rotation due), V(rotated) or V(not due), what the run did or would do, and since when the key signs.
      type: str
      sample: "rotation due: (check mode) ...; the signing key had been active since 2026-09-01T02:00:00Z"
    details:
      description: C(rotate_after_s), C(active_since) (null when no key had been activated), C(next_rotation).
      type: dict
      sample: {rotate_after_s: 2592000.0, active_since: "2026-09-01T02:00:00Z", next_rotation: "2026-10-01T02:00:00Z"}
msg:
  description: What happened, for people.
  returned: always
  type: str
  sample: "key 8mB7...1Yc (RS256) active: forced rotation; key Qx3v...9aQ retired, verifies until 2026-03-02T06:00:00Z"
api_requests:
  description: HTTP requests sent to the Kubernetes API server, retries included.
  returned: always
  type: int
  sample: 6
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.4
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._jwk import ALGORITHMS
from ansible_collections.runbook.ops.plugins.module_utils._jwt_rotate import RotateOptions, rotate
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._rollout import WORKLOAD_KINDS


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            namespace=dict(type="str", required=True),
            secret_name=dict(type="str", required=True),
            secret_key=dict(type="str", default="jwks.json", no_log=False),
            algorithm=dict(type="str", choices=list(ALGORITHMS), default="RS256"),
            key_size=dict(type="int", default=3072, no_log=False),
            rotate_after=dict(type="str", default="30d"),
            force=dict(type="bool", default=False),
            grace_period=dict(type="str", default="24h"),
            prepublish=dict(type="str", default="0"),
            revoke=dict(type="list", elements="str", default=[]),
            public_jwks=dict(type="dict", options=dict(
                kind=dict(type="str", choices=["ConfigMap", "Secret"], default="ConfigMap"),
                name=dict(type="str", required=True),
                key=dict(type="str", default="jwks.json", no_log=False),
                namespace=dict(type="str"),
            )),
            active_key_secret=dict(type="dict", no_log=False, options=dict(
                name=dict(type="str", required=True),
                key=dict(type="str", default="jwt-secret", no_log=False),
                format=dict(type="str", choices=["pem", "jwk", "raw"]),
                namespace=dict(type="str"),
            )),
            restart=dict(type="list", elements="dict", default=[], options=dict(
                kind=dict(type="str", choices=list(WORKLOAD_KINDS), default="Deployment"),
                name=dict(type="str", required=True),
                namespace=dict(type="str"),
            )),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=300),
            now=dict(type="str"),
        ),
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, RotateOptions.from_params, rotate)


if __name__ == "__main__":
    main()
