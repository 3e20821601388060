#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_snapshot
short_description: Redis RDB snapshots, their verification and restore through the backup repository
version_added: 0.1.0
description:
  - Takes an RDB snapshot of a Redis server and streams it, compressed and encrypted, into the
    runbook.ops backup repository (a local directory or any S3 API), with a manifest recording the Redis
    version, the RDB version, the keys per database and the used memory.
  - O(method=replication) fetches the RDB over the replication protocol (C(REPLCONF rdb-only), C(SYNC))
    from a local or remote server, disk-based or diskless; the 40-byte end marker of diskless transfers
    is stripped. The ACL user needs only C(+sync +replconf) (and C(+info)).
  - O(method=bgsave) runs C(BGSAVE), waits until it really finished (not in progress, last status ok, save
    counter advanced; C(LASTSAVE) is never trusted) and reads the file named by C(CONFIG GET dir) and
    C(dbfilename) on the managed host.
  - O(state=verify) checks a stored snapshot at O(level=checksum) (stored bytes against the manifest),
    O(level=rdb) (decrypt and check the RDB header, end opcode and CRC64, and C(redis-check-rdb) when it is
    installed) or O(level=load) (load it into a throwaway local C(redis-server) and compare the keys per
    database with the manifest).
  - O(state=restore) with O(method=keys) loads the snapshot into a throwaway local C(redis-server) on a
    private unix socket and copies every key to the target, keeping TTLs; it works on remote targets. Over
    plain TCP the throwaway server hands the keys to the target itself (C(MIGRATE ... COPY REPLACE), in batches
    of 1000, values never decoded here); over TLS, with C(RESTORE) renamed, or when the target refuses the first
    batch, the module copies them with pipelined C(DUMP)/C(RESTORE REPLACE). O(method=file) installs the RDB as the data file of a Redis on the
    managed host; with C(appendonly yes) it moves the AOF aside, starts Redis with the AOF off, switches it
    back on and waits for the rewrite, so the restored data survives the next restart.
  - O(state=flushed) is the guarded form of the runbooks' C(FLUSHDB). It first counts the keys matching
    O(protected_patterns) in what would be flushed (C(SCAN MATCH), never C(KEYS)) and refuses, before anything is
    written, when there are any and O(force) is off. Otherwise it takes a new snapshot by O(method), verifies it at
    O(level), counts the protected keys again (keys written meanwhile) and only then runs C(FLUSHDB) on O(db) or,
    with O(flush_all=true), C(FLUSHALL). Restore the snapshot (RV(backup_id)) with O(state=restore) to undo it.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.redis
  - runbook.ops.kubernetes_tunnel
  - runbook.ops.repository
  - runbook.ops.repository.ENCRYPTION_IDENTITY
  - runbook.ops.repository.BACKUP_JOB
  - runbook.ops.repository.RETENTION
  - runbook.ops.encryption
attributes:
  check_mode:
    support: full
    description:
      - A backup reports what it would do (after reading C(INFO)); restore and verify change nothing.
      - O(state=flushed) counts the keys and the protected keys, reports what it would flush (RV(flushed)) and fails
        as a real run would when protected keys refuse the flush; it takes no snapshot and flushes nothing.
      - O(state=verify) runs for real in check mode, as it only reads.
  diff_mode:
    support: partial
    description: Shows what would change.
    details: O(state=restore) shows the keys per database before and after.
options:
  state:
    description:
      - What to do.
      - V(flushed) empties O(db) (or every database with O(flush_all=true)) after a verified snapshot, unless it
        holds keys matching O(protected_patterns).
    type: str
    choices: [backup, restore, verify, flushed]
    default: backup
  method:
    description:
      - For O(state=backup) and O(state=flushed) (its snapshot), V(replication) (the default) or V(bgsave).
      - For O(state=restore), V(keys) (the default) or V(file).
    type: str
    choices: [replication, bgsave, keys, file]
  level:
    description:
      - How deeply O(state=verify) checks the snapshot, and O(state=flushed) its new snapshot before flushing.
      - O(state=flushed) with O(encryption_recipients) needs O(encryption_identity) unless the level is V(checksum).
    type: str
    choices: [checksum, rdb, load]
    default: rdb
  backup_id:
    description:
      - The backup to verify or restore; empty means the latest complete backup of the set.
      - A backup id as the repository writes it (letters, digits, C(.), C(_), C(:), C(+) and C(-)); anything else is refused.
    type: str
  flush:
    description: With O(method=keys), empty the target (C(FLUSHALL)) before copying the keys.
    type: bool
    default: false
  db:
    description:
      - For O(state=flushed), the database to empty with C(FLUSHDB) (0, 1, ...).
      - O(state=flushed) requires O(db) or O(flush_all=true); they are mutually exclusive.
    type: int
  flush_all:
    description:
      - For O(state=flushed), empty every database with C(FLUSHALL) instead of one; it must be asked for
        explicitly, V(false) names no target.
    type: bool
  protected_patterns:
    description:
      - For O(state=flushed), key patterns (Redis glob syntax, as C(SCAN MATCH) takes them) whose presence in what
        would be flushed refuses the flush unless O(force=true). The default covers common session and rate-limit keys.
      - Only counts per database and pattern are reported, never key names (session keys often embed tokens).
      - An empty list turns the check off.
    type: list
    elements: str
    default: ["session:*", "sess:*", "ratelimit:*", "rate_limit:*", "rl:*"]
  force:
    description:
      - For O(state=flushed), flush even when keys match O(protected_patterns) (a warning names the counts).
      - The snapshot is still taken and verified first.
    type: bool
    default: false
  service_name:
    description:
      - For O(method=file), the systemd unit of the Redis server; it is stopped and started with C(systemctl).
      - O(method=file) requires either O(service_name) or both O(stop_command) and O(start_command).
      - A name starting with C(-) or holding whitespace, C(/) or control characters is refused.
    type: str
  stop_command:
    description:
      - For O(method=file) without O(service_name), the command (an argument list, no shell) that stops
        the Redis server. The module waits until the server no longer accepts connections.
    type: list
    elements: str
  start_command:
    description:
      - For O(method=file) without O(service_name), the command (an argument list, no shell) that starts
        the Redis server. It must return once the server is started (for example C(redis-server
        /etc/redis/redis.conf --daemonize yes)); the module waits until the data is loaded.
    type: list
    elements: str
  spool_dir:
    description:
      - Directory on the managed host for the throwaway C(redis-server) of O(level=load) and O(method=keys),
        which needs the RDB as a file (0600 in a 0700 directory, removed on every exit path).
      - Empty means the system temporary directory.
      - When it is full, read-only, missing or not a directory, the task fails naming it; the backup is not
        judged (a full spool never makes a good backup look corrupt).
    type: path
  wait_timeout:
    description:
      - Seconds to wait for a C(BGSAVE), the loading of an RDB, a stop, a start or an AOF rewrite.
      - 1 to 2592000 (30 days).
    type: int
    default: 3600
  validate_certs:
    description:
      - Verify TLS certificates, of the Redis server when O(tls=true) and of O(s3_endpoint_url).
    type: bool
    default: true
notes:
  - The password reaches Redis only inside the connection (C(AUTH)); it never appears in a process argument.
  - O(method=file) needs the Redis data directory and config file on the managed host and the right to stop
    and start the server. The previous RDB and AOF are kept next to them as C(<name>.pre-restore-<backup_id>)
    and listed in RV(previous_files). The RDB is staged in the data directory first; if it does not fit there,
    the task fails naming that directory before the server is stopped.
  - O(state=flushed) needs, besides the rights of its O(method), C(+select +scan +flushdb) (C(+flushall) with
    O(flush_all=true)); no key access (C(SCAN) and the flush ignore key patterns). Commands renamed on the server (also
    C(FLUSHDB) and C(FLUSHALL)) are given in O(command_names). O(max_age) does not apply, as a flush always takes a new
    snapshot. Keys written between the snapshot and the flush are lost unless writers are stopped first.
  - Requires C(redis-server) on the managed host for O(level=load) and O(method=keys); C(redis-check-rdb) is
    used by O(level=rdb) when present. Requires C(boto3) for S3 repositories, C(zstandard) and C(pyrage) for
    compression and encryption.
seealso:
  - module: runbook.ops.backup_repo
  - module: runbook.ops.pg_backup
"""

EXAMPLES = r"""
- name: Snapshot the session Redis over the replication protocol into S3, encrypted
  runbook.ops.redis_snapshot:
    login_host: redis.sessions.svc
    login_user: backup
    login_password: "{{ vault_redis_backup_password }}"
    repository: s3://platform-backups/runbook
    region: eu-west-1
    set: sessions
    encryption_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    max_age: 6h
    retention:
      keep_daily: 7
      keep_weekly: 4
  register: snapshot

- name: Snapshot a local Redis with BGSAVE
  runbook.ops.redis_snapshot:
    login_password: "{{ vault_redis_password }}"
    method: bgsave
    repository: file:///var/backups/runbook

- name: Prove that the latest snapshot loads and holds the recorded keys
  runbook.ops.redis_snapshot:
    state: verify
    level: load
    repository: s3://platform-backups/runbook
    region: eu-west-1
    set: sessions
    encryption_identity: /etc/runbook/backup-identity.txt

- name: Restore it key by key into a fresh instance
  runbook.ops.redis_snapshot:
    state: restore
    login_host: redis-restore.sessions.svc
    login_password: "{{ vault_redis_password }}"
    flush: true
    repository: s3://platform-backups/runbook
    region: eu-west-1
    set: sessions
    encryption_identity: /etc/runbook/backup-identity.txt

- name: Empty the stale cache database the nightly job used to FLUSHDB, after a verified snapshot
  runbook.ops.redis_snapshot:
    state: flushed
    db: 2
    login_host: redis.sessions.svc
    login_password: "{{ vault_redis_password }}"
    command_names:
      FLUSHDB: HIPAA_FLUSHDB_a1b2c3
    repository: s3://platform-backups/runbook
    region: eu-west-1
    set: sessions
    encryption_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    encryption_identity: /etc/runbook/backup-identity.txt
  register: flush

- name: Put the snapshot back as the data file of the local Redis (AOF handled)
  runbook.ops.redis_snapshot:
    state: restore
    method: file
    service_name: redis-server
    login_password: "{{ vault_redis_password }}"
    repository: file:///var/backups/runbook
    set: localhost-6379
    backup_id: 20261124T031500Z-3fa91c
"""

RETURN = r"""
backup_id:
  description:
    - The backup written, skipped for, verified or restored; with O(state=flushed) the snapshot taken before the
      flush (empty when none was taken).
  returned: always
  type: str
  sample: 20261124T031500Z-3fa91c
manifest:
  description:
    - The backup's manifest. Its C(redis) field holds C(version), C(rdb_version), C(method), C(keys) and
      C(expires) per database (from C(INFO keyspace) when the snapshot started), C(used_memory),
      C(rdb_size) and C(rdb_checksum).
  returned: when a backup was written, skipped for, verified or restored; empty in check mode for a backup or a flush
  type: dict
backup:
  description: Summary of the backup (id, kind, set, created, finished, size, stored_size, encrypted, compression, labels).
  returned: when O(state=backup) or O(state=flushed); empty when no snapshot was taken
  type: dict
skipped:
  description: True when a backup younger than O(max_age) exists, so nothing was done.
  returned: only then (never false; Ansible shows the task as skipped)
  type: bool
  sample: false
pruned:
  description: Backups removed by O(retention) after the successful backup.
  returned: always
  type: list
  elements: dict
keys_restored:
  description:
    - Keys per database written to the target (O(method=keys)) or held by the restarted server (O(method=file)).
    - Empty in check mode.
  returned: when O(state=restore)
  type: dict
  sample: {"db0": 5000, "db1": 12}
previous_files:
  description: The former RDB file and AOF, kept under new names by O(method=file).
  returned: when O(state=restore) and O(method=file), unless in check mode
  type: list
  elements: str
verified:
  description:
    - One entry per backup verified - the one of O(state=verify), the key count check of a restore or the snapshot
      of O(state=flushed) (empty in check mode and when no snapshot was taken). The same shape in every runbook.ops
      module.
  returned: when O(state=verify), O(state=restore) or O(state=flushed)
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup verified.
      type: str
    kind:
      description: Always C(redis).
      type: str
    set:
      description: The backup set.
      type: str
    level:
      description: C(checksum), C(rdb) or C(load) (a restore checks at C(load)).
      type: str
    ok:
      description: True when no problem was found.
      type: bool
    problems:
      description: What is wrong, one message per problem.
      type: list
      elements: str
    details:
      description:
        - The level's own facts. C(checksum) none; C(rdb) C(rdb_version), C(rdb_size), C(crc_checked_by) (C(python),
          C(redis-check-rdb)), C(keys_read) (by C(redis-check-rdb)) and C(note) when the RDB holds no checksum;
          C(load) C(keys) (per database, as loaded).
      type: dict
flushed:
  description: What O(state=flushed) emptied, or would empty in check mode or when refused.
  returned: when O(state=flushed)
  type: dict
  contains:
    command:
      description: C(FLUSHDB) or C(FLUSHALL) (the logical name; O(command_names) may rename it on the server).
      type: str
      sample: FLUSHDB
    db:
      description: The database of C(FLUSHDB); null for C(FLUSHALL).
      type: int
      sample: 2
    keys_before:
      description: Keys per database just before the flush (at the check in check mode or when refused).
      type: dict
      sample: {"db2": 48211}
    protected_keys:
      description:
        - Keys matching O(protected_patterns), counted per database and pattern (only non-zero counts). Non-empty
          only when the flush was refused or forced.
      type: dict
      sample: {"db2": {"session:*": 17}}
    done:
      description: True once the flush ran.
      type: bool
      sample: true
diff:
  description: With O(state=restore) and C(--diff), the keys per database before and as expected after.
  returned: when O(state=restore) and the task runs with C(--diff)
  type: dict
duration_s:
  description: Wall time of the operation in seconds.
  returned: always
  type: float
  sample: 13.2
throughput_mib_s:
  description: Uncompressed RDB MiB per second of the operation.
  returned: always
  type: float
  sample: 48.7
msg:
  description: What was done, in words.
  returned: always
  type: str
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import tunnel_kubeconfig_secrets
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import REDIS_CONNECTION_REQUIRED_BY
from ansible_collections.runbook.ops.plugins.module_utils._redis_snapshot import (
    RedisSnapshotOptions, redis_snapshot_argspec, run_redis_snapshot)


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=redis_snapshot_argspec(),
        required_together=[("stop_command", "start_command")],
        mutually_exclusive=[("service_name", "stop_command"), ("service_name", "start_command"), ("db", "flush_all")],
        required_if=[("method", "file", ("service_name", "stop_command"), True),
                     ("state", "flushed", ("db", "flush_all"), True)],
        required_by=dict(REDIS_CONNECTION_REQUIRED_BY),
        supports_check_mode=True,
        sensitive=[tunnel_kubeconfig_secrets],
    )


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, RedisSnapshotOptions.from_params, run_redis_snapshot)


if __name__ == "__main__":
    main()
