#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_credential_rotate
short_description: Rotate a Redis ACL user's password kept in a Kubernetes Secret and restart its consumers
version_added: 0.1.0
description:
  - Adds a new random password to a Redis ACL user (C(ACL SETUSER user >new)), writes it into the Kubernetes
    Secret the applications read (password, user and a connection URL key), restarts every workload that
    uses the Secret one by one, waiting for each to be Ready, checks that the new password logs in, and only
    then removes the previous password (C(ACL SETUSER user <old)). Until then both passwords work, so no
    consumer is locked out.
  - Both changes are persisted with C(ACL SAVE) when the server keeps its users in an ACL file. A server
    without one (C(requirepass) or C(user) lines in its configuration file) gets C(CONFIG REWRITE) instead,
    which writes the users into the configuration file as SHA-256 hashes; a server started without a
    configuration file, or one that refuses C(CONFIG REWRITE) (renamed, no permission), is warned about - the
    change then lives in memory and a restart brings the previous password back.
  - A server that only has C(requirepass) (no ACL users) is rotated as O(user=default), in the same order.
    Redis 6 and later keep several passwords for the C(default) user too, so both passwords work until the
    consumers are Ready, as for any ACL user; when the previous one is removed, C(requirepass) is pointed at
    the new password (C(CONFIG SET), which Redis redacts in C(SLOWLOG) and C(MONITOR)) before the rewrite, so
    the configuration file names no revoked password. The C(default) user is then also the admin login, so
    the next run needs the new password as O(login_password) (read it from the Secret).
  - The API server gone after the new password was added but before the Secret write - the task fails
    saying so; the previous password still works, and the next run finds the new one (kept in the rotation
    record, written before Redis was touched) logs in, writes it into the Secret and finishes the rotation.
  - A rotation holds a companion Secret C(<name>-rotation) while it runs. A second run started at the same
    time waits for it and reports the rotation done; a run interrupted after the Redis change leaves the new
    password there and the next run finishes the rotation with it.
  - A consumer that does not become Ready stops the run; the previous password stays valid, the task fails
    naming the workload, and the next run continues from there.
  - Connections authenticated with the previous password stay authenticated after it is removed (Redis checks
    passwords only at C(AUTH)).
  - No password is ever in a result, warning, any process's command line or environment.
  - Needs Redis 6 or later (ACL commands).
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
  - runbook.ops.kubernetes_tunnel
  - runbook.ops.credential_rotation
attributes:
  check_mode:
    support: full
    description: Logs in with the Secret's password and reports whether a rotation is due; changes nothing.
  diff_mode:
    support: none
    description: No diff; credentials are never shown.
options:
  user:
    description: The ACL user the Secret is for; V(default) for a server that only has C(requirepass).
    type: str
    required: true
  login_host:
    description:
      - Host name or IP address of the Redis server.
      - The environment variable E(REDIS_HOST) is used when this is not set.
    type: str
    default: localhost
  login_port:
    description:
      - TCP port of the server.
      - The environment variable E(REDIS_PORT) is used when this is not set.
    type: int
    default: 6379
  login_user:
    description:
      - The admin ACL user the module connects as (needs C(+acl) and C(+ping)); the default user when not set.
      - The environment variable E(REDIS_USERNAME) is used when this is not set.
    type: str
  login_password:
    description:
      - The admin login's password; never shown.
      - The environment variable E(REDIS_PASSWORD) is used when this is not set.
    type: str
  tls:
    description:
      - Connect with TLS.
      - The environment variable E(REDIS_TLS) (V(true) or V(false)) is used when this is not set.
    type: bool
    default: false
  tls_validate_certs:
    description:
      - Verify the server's TLS certificate and host name.
      - Named C(validate_certs) in the other Redis modules; here C(validate_certs) is the Kubernetes option.
    type: bool
    default: true
  ca_certs:
    description:
      - CA bundle (PEM file) to verify the server with.
      - The environment variable E(REDIS_TLS_CA_CERT) is used when this is not set.
    type: str
  client_cert_file:
    description:
      - Client certificate (PEM file) for servers that ask for one.
      - The environment variable E(REDIS_TLS_CERT) is used when this is not set.
    type: str
  client_key_file:
    description:
      - Unencrypted private key of O(client_cert_file).
      - The environment variable E(REDIS_TLS_KEY) is used when this is not set.
    type: str
  connect_timeout:
    description: Seconds to wait for a connection or a reply.
    type: float
    default: 10.0
  command_names:
    description: Commands renamed on the server (C(rename-command)), for example C(ACL) mapped to its name on the server.
    type: dict
    default: {}
notes:
  - Needs get, update, create and delete on Secrets of the namespace, list on Deployments, StatefulSets,
    DaemonSets and CronJobs (or O(discover_consumers=false)), get and patch on the consumers.
  - Redis permissions - C(+acl) and C(+ping), and C(+config) on a server without an ACL file.
seealso:
  - module: runbook.ops.pg_credential_rotate
"""

EXAMPLES = r"""
- name: Rotate the HIPAA Redis password; both stay valid until every consumer runs with the new one
  runbook.ops.redis_credential_rotate:
    login_host: redis.hipaa.svc
    login_user: admin
    login_password: "{{ redis_admin_password }}"
    user: hipaa-app
    secret:
      namespace: hipaa
      name: redis-credentials
      password_key: REDIS_PASSWORD
      url_key: REDIS_URL
    consumers:
      - name: worker
      - name: api
"""

RETURN = r"""

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
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    REDIS_CONNECTION_REQUIRED_BY, redis_connection_argspec,
)
from ansible_collections.runbook.ops.plugins.module_utils._redis_credentials import (
    RedisRotateOptions, run_redis_credential_rotate,
)


def _connection_argspec() -> t.Dict[str, t.Any]:
    """The Redis connection options; TLS verification is renamed (validate_certs is the Kubernetes option)."""
    spec = redis_connection_argspec()
    spec["tls_validate_certs"] = spec.pop("validate_certs")
    return spec


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            **_connection_argspec(),
            **credential_argspec(),
            user=dict(type="str", required=True),
        ),
        required_by=dict(REDIS_CONNECTION_REQUIRED_BY),
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, RedisRotateOptions.from_params, run_redis_credential_rotate)


if __name__ == "__main__":
    main()
