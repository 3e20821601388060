#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_credential_rotate
short_description: Rotate a PostgreSQL role's password kept in a Kubernetes Secret and restart its consumers
version_added: 0.1.0
description:
  - Gives a PostgreSQL login a new random password, writes it into the Kubernetes Secret the applications
    read (user, password and a connection URL key), restarts every workload that uses the Secret one by one,
    waiting for each to be Ready, and only then revokes the previous credential.
  - The password reaches the server only as a SCRAM-SHA-256 verifier computed by the module, in a
    transaction that first turns statement logging and C(pg_stat_statements) tracking off for itself, so no
    plaintext password can reach the server log or statistics. It is never in a result, diff, warning, or
    any process's command line or environment (no client program is run).
  - O(strategy=single) sets the new password on O(role); the previous password stops working at once, so
    consumers not yet restarted fail their next new connection until they are.
  - O(strategy=alternating) keeps two login roles, O(role) and O(second_role), members of O(group_role)
    which owns the grants. Each rotation gives the idle one a new password and points the Secret at it; the
    other keeps logging in until every consumer is Ready and O(grace_period) has passed, then its login is
    disabled (C(NOLOGIN); open connections are not ended). With a O(grace_period), nothing waits; the run
    that rotated records when the grace ends, runs before then report it and change nothing, and the first
    run after it disables the login.
  - A rotation holds a companion Secret C(<name>-rotation) while it runs, created before the database is
    touched and holding the new password. A second run started at the same time waits for it and reports the
    rotation done, so two runs make one rotation.
  - The API server gone after the database change but before the Secret write - the task fails saying so
    and naming the record. The change is not rolled back (the module cannot tell whether a write that broke
    off reached the API server); the next run finds the record, checks that the new password logs in, writes
    it into the Secret, restarts the consumers and revokes the previous credential - the new password is
    recovered. Until that run, O(strategy=alternating) leaves the Secret's credentials working; with
    O(strategy=single) the Secret's password no longer logs in, so consumers that restart in between cannot
    connect until the next run.
  - A consumer that does not become Ready stops the run; the previous credential stays valid, the task fails
    naming the workload, and the next run continues from there.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
  - runbook.ops.kubernetes_tunnel
  - runbook.ops.credential_rotation
attributes:
  check_mode:
    support: full
    description: Compares the Secret's password with the role's stored verifier and reports whether a rotation is due; changes nothing.
  diff_mode:
    support: none
    description: No diff; credentials are never shown.
options:
  role:
    description: The login role the Secret is for (with O(strategy=alternating), the first of the two).
    type: str
    required: true
  strategy:
    description: V(single) (one role, new password) or V(alternating) (two roles, the previous one stays valid).
    type: str
    choices: [single, alternating]
    default: single
  second_role:
    description: The other login role of O(strategy=alternating); created (in O(group_role)) when absent. Default C(<role>_b).
    type: str
  group_role:
    description: The role that owns the grants, both login roles being its members; required with O(strategy=alternating).
    type: str
  database:
    description:
      - Database the module and the login checks connect to (roles are cluster-wide, so this is only where to connect).
      - The environment variable E(PGDATABASE) is used when this is not set.
    type: str
    default: postgres
  login_host:
    description:
      - Host name or IP address of the PostgreSQL server; empty means a local Unix socket.
      - The environment variable E(PGHOST) is used when this is not set.
    type: str
    default: ''
  login_port:
    description:
      - TCP port of the server, from 1 to 65535.
      - The environment variable E(PGPORT) is used when this is not set.
    type: int
    default: 5432
    aliases: [port]
  login_user:
    description:
      - The admin role the module connects as; it needs C(CREATEROLE) (superuser to turn statement logging off).
      - The environment variable E(PGUSER) is used when this is not set.
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description:
      - The admin role's password; never shown.
      - The environment variable E(PGPASSWORD) is used when this is not set.
    type: str
    default: ''
  login_unix_socket:
    description: Directory of the server's Unix socket; when set, it is used instead of O(login_host).
    type: str
    default: ''
    aliases: [unix_socket]
  ssl_mode:
    description:
      - libpq's C(sslmode).
      - The environment variable E(PGSSLMODE) is used when this is not set.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ssl_rootcert:
    description:
      - CA certificate file to verify the server with (libpq's C(sslrootcert)).
      - Named C(ca_cert) in the other PostgreSQL modules; here C(ca_cert) is the Kubernetes option.
      - The environment variable E(PGSSLROOTCERT) is used when this is not set.
    type: str
  ssl_cert:
    description:
      - Client certificate file (PEM) for TLS client authentication (libpq's C(sslcert)).
      - The environment variable E(PGSSLCERT) is used when this is not set.
    type: str
  ssl_key:
    description:
      - Private key file of O(ssl_cert) (libpq's C(sslkey)).
      - The environment variable E(PGSSLKEY) is used when this is not set.
    type: str
  connect_timeout:
    description: Seconds to wait for a connection, from 1 to 86400.
    type: int
    default: 10
notes:
  - Needs get, update, create and delete on Secrets of the namespace, list on Deployments, StatefulSets,
    DaemonSets and CronJobs (or O(discover_consumers=false)), get and patch on the consumers.
  - A connection through O(kubernetes_tunnel) uses the same Kubernetes credentials options nested there.
seealso:
  - module: runbook.ops.redis_credential_rotate
"""

EXAMPLES = r"""
- name: Rotate the HIPAA application's database password monthly, both roles alternating
  runbook.ops.pg_credential_rotate:
    login_host: postgres.hipaa.svc
    login_password: "{{ pg_admin_password }}"
    role: hipaa_app_user
    strategy: alternating
    group_role: hipaa_app
    secret:
      namespace: hipaa
      name: db-credentials
      user_key: DB_USER
      password_key: DB_PASSWORD
      url_key: DATABASE_URL
    rotate_after: 30d
    grace_period: 1h

- name: Repair a Secret whose password was changed by hand (the role gets a new password that matches)
  runbook.ops.pg_credential_rotate:
    kubernetes_tunnel:
      namespace: personapass
      target: service/postgres
    login_password: "{{ pg_admin_password }}"
    role: personapass
    secret:
      namespace: personapass
      name: postgres-secrets
      password_key: POSTGRES_PASSWORD
"""

RETURN = r"""
strategy:
  description: The strategy used.
  returned: always
  type: str
  sample: alternating

changed:
  description: Whether the database or the Secret changed, or a consumer was restarted (or would be, in check mode).
  returned: always
  type: bool
  sample: true
msg:
  description: What happened, for people.
  returned: always
  type: str
  sample: "Secret/app/db-credentials rotated (last rotation 2026-01-01T00:00:00Z is older than rotate_after)"
rotated:
  description: Whether this run put a new credential into the Secret (in check mode, whether it would).
  returned: always
  type: bool
  sample: true
user:
  description: The login the Secret names after this run.
  returned: always
  type: str
  sample: app_user_b
secret:
  description: The Secret, as C(Secret/namespace/name).
  returned: always
  type: str
  sample: Secret/app/db-credentials
steps:
  description: Each step of the run in order, with its outcome; never a password or verifier.
  returned: always
  type: list
  elements: dict
  contains:
    step:
      description: V(lock), V(check), V(database), V(secret), V(consumers), V(verify), V(revoke), V(resume) or V(rotate).
      type: str
    outcome:
      description: What came of it (V(due), V(not due), V(changed), V(written), V(ready), V(failed), V(done), ...).
      type: str
    detail:
      description: Facts about the step, for people.
      type: str
consumers:
  description: The workloads that use the Secret and what happened to them.
  returned: always
  type: dict
  contains:
    restarted:
      description: Workloads restarted and Ready, as C(Kind/namespace/name) (the failed one too, when one failed).
      type: list
      elements: str
    current:
      description: Workloads that already ran this rotation's template (a resumed run) and were only waited for.
      type: list
      elements: str
    failed:
      description: The workload that did not become Ready in time; the previous credential then stays valid.
      type: list
      elements: str
    not_restarted:
      description: Workloads after a failed one, left alone.
      type: list
      elements: str
    cronjobs:
      description: CronJobs that reference the Secret; not restarted (their next Job reads the new value).
      type: list
      elements: str
revoked:
  description: Whether the previous credential no longer logs in after this run.
  returned: always
  type: bool
  sample: true
next_rotation:
  description: When the next rotation is due (UTC), from the last rotation recorded on the Secret; null when none is.
  returned: always
  type: str
  sample: "2026-04-01T06:00:00Z"
concurrent_change:
  description: Whether another run was rotating the same Secret at the same time (this run then waited for it).
  returned: always
  type: bool
  sample: false
api_requests:
  description: HTTP requests sent to the Kubernetes API server, retries included.
  returned: always
  type: int
  sample: 14
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 12.5
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._credentials import credential_argspec
from ansible_collections.runbook.ops.plugins.module_utils._env import env_default
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import postgres_connection_argspec
from ansible_collections.runbook.ops.plugins.module_utils._pg_credentials import (
    PgRotateOptions, run_pg_credential_rotate,
)


def _connection_argspec() -> t.Dict[str, t.Any]:
    """The PostgreSQL connection options without the names the Kubernetes options own (host, ca_cert)."""
    spec = postgres_connection_argspec()
    without_aliases = {name: spec.pop(name) for name in ("login_host", "ca_cert")}
    for name, option in without_aliases.items():
        option.pop("aliases")
    spec["login_host"] = without_aliases["login_host"]
    spec["ssl_rootcert"] = without_aliases["ca_cert"]
    return spec


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            **_connection_argspec(),
            **credential_argspec(),
            role=dict(type="str", required=True),
            strategy=dict(type="str", choices=["single", "alternating"], default="single"),
            second_role=dict(type="str"),
            group_role=dict(type="str"),
            database=dict(type="str", default="postgres", fallback=env_default("PGDATABASE")),
        ),
        required_if=[("strategy", "alternating", ("group_role",))],
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, PgRotateOptions.from_params, run_pg_credential_rotate)


if __name__ == "__main__":
    main()
