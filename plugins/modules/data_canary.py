#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: data_canary
short_description: Write a timestamped canary into PostgreSQL or Redis before a backup, and read it back from restored data
version_added: 0.3.0
description:
  - A drill's recovery point must come from the data it restored, not from the backup's own time. The C(backup) role
    writes a canary into each database and Redis instance right before backing it up; after a restore, O(state=read)
    returns its time, which M(runbook.ops.dr_journal) turns into RPO.
  - PostgreSQL - a row O(name) in the table O(schema).O(table) (created when missing with the columns C(name text
    primary key), C(written_at timestamptz), C(token text)) of database O(db).
  - Redis - the key O(key) in database O(redis_db), holding JSON C({"written_at", "token"}) without a TTL.
  - The time is the data store's own clock (C(clock_timestamp()), Redis C(TIME); this host's clock, with a warning,
    when C(TIME) is not allowed), as any other row's timestamp would be; the random token tells one canary from the next.
  - O(state=read) never changes anything. With O(timestamp_column) it also returns C(max()) of a declared column
    (RV(newest_at)), for data whose own timestamps say how recent it is.
  - Schema, table and column names are always quoted identifiers, never SQL text; names PostgreSQL cannot hold
    (control characters, more than 63 bytes) are refused.
  - The connection options are those of M(runbook.ops.pg_backup) or M(runbook.ops.redis_snapshot). Where the two
    differ (O(login_host), O(login_port), O(login_user), O(login_password), O(connect_timeout)), an option left unset
    takes the default and environment variable of the chosen O(service) only.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.kubernetes_tunnel
attributes:
  check_mode:
    support: full
    description: Connects (so an unreachable server still fails) and writes nothing; RV(written_at) and RV(token) are null.
  diff_mode:
    support: full
    description: Shows the canary before and after (its time and token; a canary holds no secret).
options:
  service:
    description: Where the canary lives.
    type: str
    required: true
    choices: [postgresql, redis]
  state:
    description: V(written) writes a new canary (always a change); V(read) reads it back.
    type: str
    choices: [written, read]
    default: written
  db:
    description: With O(service=postgresql), the database.
    type: str
    default: postgres
    aliases: [login_db]
  schema:
    description: With O(service=postgresql), the canary table's schema (it must exist).
    type: str
    default: public
  table:
    description: With O(service=postgresql), the canary table.
    type: str
    default: runbook_canary
  name:
    description: With O(service=postgresql), the canary's row (several writers keep apart by name).
    type: str
    default: runbook
  redis_db:
    description: With O(service=redis), the logical database.
    type: int
    default: 0
  key:
    description: With O(service=redis), the canary's key.
    type: str
    default: runbook:canary
  timestamp_column:
    description:
      - With O(service=postgresql) and O(state=read), a column whose C(max()) is returned as RV(newest_at).
      - A C(timestamp without time zone) or C(date) column is read as UTC; any other type is refused.
    type: dict
    suboptions:
      schema:
        description: Its schema.
        type: str
        default: public
      table:
        description: Its table.
        type: str
        required: true
      column:
        description: The column.
        type: str
        required: true
  login_host:
    description:
      - Host name or IP address of the server. Default C('') (a local Unix socket) for PostgreSQL, V(localhost) for Redis.
      - When unset, the chosen service's environment variable is used, C(PGHOST) or C(REDIS_HOST).
    type: str
    aliases: [host]
  login_port:
    description: TCP port of the server. Default 5432 for PostgreSQL (C(PGPORT) when set), 6379 for Redis (C(REDIS_PORT) when set).
    type: int
    aliases: [port]
  login_user:
    description:
      - PostgreSQL - the role to connect as (C(PGUSER) when set, else V(postgres)).
      - Redis - the ACL user (C(REDIS_USERNAME) when set, else none - the C(default) user).
    type: str
    aliases: [login]
  login_password:
    description:
      - The password (the chosen service's C(PGPASSWORD) or C(REDIS_PASSWORD) when unset). Never shown in output.
    type: str
  login_unix_socket:
    description: PostgreSQL - directory of the server's Unix socket.
    type: str
    default: ''
    aliases: [unix_socket]
  ssl_mode:
    description: PostgreSQL - libpq's C(sslmode) (E(PGSSLMODE) when unset).
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: PostgreSQL - CA certificate file to verify the server with (E(PGSSLROOTCERT) when unset).
    type: str
    aliases: [ssl_rootcert]
  ssl_cert:
    description: PostgreSQL - client certificate file (E(PGSSLCERT) when unset).
    type: str
  ssl_key:
    description: PostgreSQL - private key file of O(ssl_cert) (E(PGSSLKEY) when unset).
    type: str
  tls:
    description: Redis - connect with TLS (E(REDIS_TLS) when unset).
    type: bool
    default: false
  validate_certs:
    description: Redis - verify the server's certificate and name when O(tls=true).
    type: bool
    default: true
  ca_certs:
    description: Redis - CA bundle (PEM) to verify the server with (E(REDIS_TLS_CA_CERT) when unset).
    type: str
  client_cert_file:
    description: Redis - client certificate (PEM) for TLS client authentication (E(REDIS_TLS_CERT) when unset).
    type: str
  client_key_file:
    description: Redis - private key of O(client_cert_file) (E(REDIS_TLS_KEY) when unset).
    type: str
  command_names:
    description: Redis - commands renamed on the server with C(rename-command), as a mapping of the command to its name on the server.
    type: dict
    default: {}
  connect_timeout:
    description: Seconds to wait for a connection; default 10. PostgreSQL takes whole seconds only.
    type: float
notes:
  - Requires C(psycopg) (version 3) for PostgreSQL; Redis needs no client library.
  - The PostgreSQL role needs C(CREATE) on the schema the first time (then C(INSERT) and C(UPDATE) on the table);
    the Redis user needs C(SET), C(GET), C(SELECT) and C(TIME).
seealso:
  - module: runbook.ops.dr_journal
  - module: runbook.ops.pg_backup
  - module: runbook.ops.redis_snapshot
"""

EXAMPLES = r"""
- name: Write the canary right before the backup
  runbook.ops.data_canary:
    service: postgresql
    db: auth_service
    login_host: db.internal
    login_password: "{{ vault_pg_password }}"

- name: Read it back from the restored copy, with the newest audit row
  runbook.ops.data_canary:
    service: postgresql
    state: read
    db: auth_service_drill
    login_host: db.internal
    login_password: "{{ vault_pg_password }}"
    timestamp_column:
      table: audit_logs
      column: created_at
  register: restored

- name: Write the Redis canary
  runbook.ops.data_canary:
    service: redis
    login_host: redis.internal
    login_password: "{{ vault_redis_password }}"
"""

RETURN = r"""
changed:
  description: V(true) when a canary was (or, in check mode, would be) written; V(false) for O(state=read).
  returned: always
  type: bool
  sample: true
msg:
  description: What was written or found, and where.
  returned: always
  type: str
  sample: canary written into table "public"."runbook_canary" of database "auth" on 10.0.0.5:5432 at 2026-11-24T03:14:59Z
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.041
service:
  description: V(postgresql) or V(redis).
  returned: success
  type: str
  sample: postgresql
written_at:
  description: The canary's time (UTC, ISO 8601), by the data store's clock; null when none was found or in check mode.
  returned: success
  type: str
  sample: "2026-11-24T03:14:59Z"
token:
  description: The canary's random token; null when none was found or in check mode.
  returned: success
  type: str
  sample: 5d0c3f8e2a9b4c1d7e6f0a1b2c3d4e5f
found:
  description: Whether a canary was found.
  returned: when O(state=read)
  type: bool
  sample: true
age_seconds:
  description: Seconds between the canary's time and the data store's clock now; null when none was found.
  returned: when O(state=read)
  type: float
  sample: 612.5
newest_at:
  description: C(max()) of O(timestamp_column) (UTC, ISO 8601); null when the table is empty.
  returned: when O(state=read) and O(timestamp_column) is set
  type: str
  sample: "2026-11-24T03:14:02Z"
diff:
  description: The canary before and after, under C(--diff).
  returned: when O(state=written) and diff mode is on
  type: dict
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._canary import (
    SERVICES, STATES, CanaryOptions, canary_connection_argspec, run_data_canary)
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import tunnel_kubeconfig_secrets
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import REDIS_CONNECTION_REQUIRED_BY


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = canary_connection_argspec()
    spec.update(
        service=dict(type="str", required=True, choices=list(SERVICES)),
        state=dict(type="str", choices=list(STATES), default="written"),
        db=dict(type="str", default="postgres", aliases=["login_db"]),
        schema=dict(type="str", default="public"),
        table=dict(type="str", default="runbook_canary"),
        name=dict(type="str", default="runbook"),
        redis_db=dict(type="int", default=0),
        key=dict(type="str", default="runbook:canary", no_log=False),
        timestamp_column=dict(type="dict", options=dict(
            schema=dict(type="str", default="public"),
            table=dict(type="str", required=True),
            column=dict(type="str", required=True),
        )),
    )
    return dict(
        argument_spec=spec,
        required_by=dict(REDIS_CONNECTION_REQUIRED_BY),
        supports_check_mode=True,
        sensitive=[tunnel_kubeconfig_secrets],
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, CanaryOptions.from_params, run_data_canary)


if __name__ == "__main__":
    main()
