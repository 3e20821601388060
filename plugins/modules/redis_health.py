#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_health
short_description: Judge the health of a Redis server, as findings
version_added: 0.2.0
description:
  - Reads a Redis server with a handful of commands (one C(INFO), C(SLOWLOG GET), C(ACL LOG), a few C(CONFIG GET)
    and C(ACL DRYRUN) calls) and returns findings (the shared C(severity), C(check), C(object), C(message),
    C(details) schema), the worst severity as RV(status) and a count per severity as RV(summary).
  - 'Checks (stable ids): C(reachability); C(role) (against O(expected_role)); C(memory) against C(maxmemory) read with
    C(maxmemory-policy) (under C(noeviction) the risk is writes failing with OOM, under C(allkeys-*) reaching the limit
    is normal) or, when C(maxmemory) is 0, against the memory limit of the container Redis runs in (only readable
    when Redis runs on the managed host), never against host memory; C(evictions) per second (expirations
    alongside); C(fragmentation); C(connections) against C(maxclients); C(rejected_connections);
    C(blocked_clients); C(rdb_save) (last BGSAVE status, age of the last save while changes wait); C(aof) (status,
    last write and rewrite); C(fork_time); C(replication) (a replica''s link, seconds down, last contact; on a master
    each replica''s offset lag in bytes and its last acknowledgement); C(slowlog) (per command name with the count and
    the slowest duration, never arguments, which can hold data); C(hit_ratio); C(acl_denials); C(risky_config) (a
    default user without password on a non-loopback bind, C(protected-mode no), dangerous commands the default user
    may run).'
  - 'Counters are judged over an interval: since the run whose RV(counters) are passed as O(previous) (the same server
    run, recognised by C(run_id)), else since the server started. The slowlog is read incrementally the same way.'
  - A command the ACL user may not run (C(+info), C(+slowlog), C(+config|get), C(+acl)) or that is disabled makes the
    checks that need it V(unknown), naming the missing permission; it never fails the task. See RV(findings) and the
    least-privilege ACL line in the notes.
  - Read only; check mode runs every check as usual.
  - Thresholds, with the checks they apply to, are listed in C(docs/redis_health.md).
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.redis
  - runbook.ops.kubernetes_tunnel
attributes:
  check_mode:
    support: full
    description: The module only reads; check mode runs every check as usual.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
options:
  checks:
    description: The checks to run (stable ids; each finding's C(check) is one of them).
    type: list
    elements: str
    choices: [reachability, role, memory, evictions, fragmentation, connections, rejected_connections, blocked_clients,
              rdb_save, aof, fork_time, replication, slowlog, hit_ratio, acl_denials, risky_config]
    default: [reachability, role, memory, evictions, fragmentation, connections, rejected_connections, blocked_clients,
              rdb_save, aof, fork_time, replication, slowlog, hit_ratio, acl_denials, risky_config]
  expected_role:
    description: The role the server should have; any other is V(critical) (a failover happened). V(any) reports it as V(ok).
    type: str
    choices: [any, master, replica]
    default: any
  previous:
    description:
      - RV(counters) of an earlier run against the same server. Evictions, rejected connections, the hit ratio, ACL
        denials and the slowlog are then judged since that run; without it (or after a restart) since the server started.
    type: dict
  fail_on:
    description:
      - Fail the task, after returning every result, when RV(status) reaches this level.
      - V(unknown) ranks above V(warning), so V(warning) also fails when something could not be checked.
    type: str
    choices: [never, warning, critical]
    default: never
  thresholds:
    description:
      - Warning and critical levels of every measure. Durations are seconds or V(500ms), V(10s), V(2h); sizes are bytes
        or V(1MB), V(100MB). An empty level is not judged.
    type: dict
    default: {}
    suboptions:
      memory_warning:
        description: Used memory as a percent of C(maxmemory) (or, when that is 0, of the container's memory limit).
        type: float
        default: 80
      memory_critical:
        description: The critical level of O(thresholds.memory_warning).
        type: float
        default: 90
      evictions_warning:
        description: Keys evicted per second over the interval.
        type: float
        default: 1
      evictions_critical:
        description: The critical level of O(thresholds.evictions_warning).
        type: float
      fragmentation_warning:
        description: C(mem_fragmentation_ratio), judged from 100 MB of used memory.
        type: float
        default: 1.5
      fragmentation_critical:
        description: The critical level of O(thresholds.fragmentation_warning).
        type: float
        default: 3
      connections_warning:
        description: Connected clients as a percent of C(maxclients).
        type: float
        default: 80
      connections_critical:
        description: The critical level of O(thresholds.connections_warning).
        type: float
        default: 95
      rejected_connections_warning:
        description: Connections rejected at C(maxclients) in the interval.
        type: float
        default: 1
      rejected_connections_critical:
        description: The critical level of O(thresholds.rejected_connections_warning).
        type: float
      blocked_clients_warning:
        description: Clients blocked in a blocking command; empty reports them as V(info).
        type: float
      blocked_clients_critical:
        description: The critical level of O(thresholds.blocked_clients_warning).
        type: float
      rdb_age_warning:
        description: Age of the last successful save while changes wait to be saved.
        type: raw
        default: 2h
      rdb_age_critical:
        description: The critical level of O(thresholds.rdb_age_warning).
        type: raw
        default: 1d
      fork_time_warning:
        description: Time the latest fork blocked the server (C(latest_fork_usec)).
        type: raw
        default: 500ms
      fork_time_critical:
        description: The critical level of O(thresholds.fork_time_warning).
        type: raw
        default: 2s
      replication_lag_bytes_warning:
        description: Replication offset a replica is behind its master (bytes or V(16MB)).
        type: raw
        default: 1MB
      replication_lag_bytes_critical:
        description: The critical level of O(thresholds.replication_lag_bytes_warning).
        type: raw
        default: 100MB
      replication_lag_warning:
        description: Time since a replica's last acknowledgement (on a master) or its last contact with the master (on a replica).
        type: raw
        default: 10s
      replication_lag_critical:
        description: The critical level of O(thresholds.replication_lag_warning).
        type: raw
        default: 60s
      link_down_warning:
        description: Time a replica's link to its master has been down (a link down for less than the warning level is still a V(warning)).
        type: raw
        default: 0s
      link_down_critical:
        description: The critical level of O(thresholds.link_down_warning).
        type: raw
        default: 60s
      slow_command_warning:
        description: Duration of a slowlog entry; entries below the warning level are counted, not reported.
        type: raw
        default: 10ms
      slow_command_critical:
        description: The critical level of O(thresholds.slow_command_warning).
        type: raw
        default: 1s
      hit_ratio_warning:
        description: Keyspace hit ratio in percent at or below which it warns (lower is worse; judged from 1000 lookups); empty reports it as V(info).
        type: float
      hit_ratio_critical:
        description: The critical level of O(thresholds.hit_ratio_warning).
        type: float
      acl_denials_warning:
        description: ACL denials (failed AUTH, forbidden commands, keys or channels) in the interval.
        type: float
        default: 1
      acl_denials_critical:
        description: The critical level of O(thresholds.acl_denials_warning).
        type: float
notes:
  - 'A least-privilege ACL user for every check: C(ACL SETUSER health on >PASSWORD -@all +ping +info +slowlog|get
    +config|get +acl|log +acl|getuser +acl|dryrun) (no key or channel access). Without C(+slowlog|get), C(+config|get)
    or the C(acl) subcommands, only the checks that need them are V(unknown).'
  - The password reaches Redis only inside the connection (C(AUTH)); it never appears in a result or a process argument.
  - Slowlog findings name the command (and a subcommand keyword such as C(CONFIG SET)), its duration and the client
    address; the arguments are never read into the result.
seealso:
  - module: runbook.ops.redis_snapshot
  - module: runbook.ops.pg_health
"""

EXAMPLES = r"""
- name: Check the session Redis on the HIPAA platform (TLS port, renamed BGSAVE, monitoring user)
  runbook.ops.redis_health:
    login_host: redis.sessions.svc
    login_port: 6380
    tls: true
    ca_certs: /etc/pki/platform-ca.pem
    login_user: health
    login_password: "{{ vault_redis_health_password }}"
    command_names:
      BGSAVE: HIPAA_BGSAVE_i9j0k1l2
    fail_on: critical
  register: redis

- name: Show what needs attention
  ansible.builtin.debug:
    msg: "{{ redis.findings | rejectattr('severity', 'in', ['ok', 'info']) | map(attribute='message') | list }}"

- name: A second look an hour later judges evictions and the slowlog since the first
  runbook.ops.redis_health:
    login_host: redis.sessions.svc
    login_password: "{{ vault_redis_password }}"
    previous: "{{ redis.counters }}"
    checks: [reachability, evictions, rejected_connections, slowlog, acl_denials]
    thresholds:
      slow_command_warning: 50ms
"""

RETURN = r"""
changed:
  description: Always V(false); the module only reads.
  returned: always
  type: bool
  sample: false
msg:
  description:
    - The verdict in words, with the count of critical, unknown and warning findings.
    - When O(fail_on) is reached, why the task failed; every other field is still returned.
  returned: always
  type: str
  sample: "Redis health on 10.0.0.7:6379 is warning: 1 warning (14 commands)"
status:
  description: The worst severity among the findings (V(ok), V(info), V(warning), V(unknown), V(critical)).
  returned: always
  type: str
  sample: warning
summary:
  description: The number of findings per severity.
  returned: always
  type: dict
  sample: {"ok": 14, "info": 2, "warning": 1, "unknown": 0, "critical": 0}
findings:
  description: What was found, worst first; every check that ran adds at least one finding.
  returned: always
  type: list
  elements: dict
  contains:
    severity:
      description: V(ok), V(info), V(warning), V(unknown) (could not be checked) or V(critical).
      type: str
    check:
      description: The stable check id (one of O(checks)).
      type: str
    object:
      description: >-
        What the finding is about, for example C(server/10.0.0.7:6379), C(replica/10.0.0.8:6379),
        C(master/10.0.0.6:6379), C(command/KEYS), C(user/default), C(config/protected-mode).
      type: str
    message:
      description: The finding in words.
      type: str
    details:
      description: >-
        The measured facts (for example C(used_memory), C(maxmemory), C(maxmemory_policy) of C(memory); C(lag_bytes)
        of a replica; C(count) and C(max_duration_us) of a slow command).
      type: dict
server:
  description: Version, mode, role, run id, uptime, used memory, C(maxmemory) and its policy; null when C(INFO) could not be read.
  returned: always
  type: dict
  sample: {"version": "7.0.15", "mode": "standalone", "role": "master", "run_id": "6e85d2...", "uptime_s": 86400,
           "used_memory": 1048576, "maxmemory": 0, "maxmemory_policy": "noeviction"}
checks_run:
  description: The checks that produced findings (only C(reachability) when the server could not be reached).
  returned: always
  type: list
  elements: str
counters:
  description:
    - The server's counters at this run; pass them as O(previous) to a later run to judge the interval between the two.
    - C(run_id), C(uptime_s), C(evicted_keys), C(expired_keys), C(rejected_connections), C(keyspace_hits),
      C(keyspace_misses), C(acl_denials) and C(slowlog_last_id) (those the user may read).
  returned: always
  type: dict
commands:
  description: The number of commands the checks sent (AUTH not counted).
  returned: always
  type: int
  sample: 14
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.05
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import tunnel_kubeconfig_secrets
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import REDIS_CONNECTION_REQUIRED_BY
from ansible_collections.runbook.ops.plugins.module_utils._redis_health import (
    RedisHealthOptions, redis_health_argspec, run_redis_health)


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=redis_health_argspec(),
        required_by=dict(REDIS_CONNECTION_REQUIRED_BY),
        supports_check_mode=True,
        sensitive=[tunnel_kubeconfig_secrets],
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, RedisHealthOptions.from_params, run_redis_health)


if __name__ == "__main__":
    main()
