#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Back up, verify and restore a PostgreSQL database through the runbook.ops backup repository
version_added: 0.1.0
description:
  - V(backup) streams C(pg_dump) (uncompressed custom format) through multi-threaded zstd compression and
    age encryption into the repository (a local directory or any S3 API); no full-size temporary file is
    written. The manifest records the server version, the database size and an exact row count of every
    dumped table, counted in the same snapshot that C(pg_dump) dumps (C(--snapshot)).
  - O(format=directory) dumps in parallel (O(jobs)) into O(spool_dir) first, then stores one object per
    file of the dump directory.
  - V(verify) checks a backup at one of three levels; V(restore) restores it into a new database, into the
    existing one (V(clean)), or into a temporary database that replaces the target only after its row
    counts matched the manifest (V(swap)).
  - Passwords reach C(pg_dump) and C(pg_restore) only through a libpq password file, never argv or the
    environment; see O(login_password) for where that file lives and what remains after a kill.
  - Database and role names are always names. The client programs receive their connection settings as one
    quoted connection string, so a name holding C(=) or starting with C(postgresql://) is never read as
    other settings (another host, another database); a restore into O(target_db=dbname=other) creates a
    database literally named C(dbname=other).
  - The C(pg_dump)/C(pg_restore) of the server's major version (or newer) is looked up in
    C(/usr/lib/postgresql/*/bin), C(/usr/pgsql-*/bin), C(/usr/local/pgsql/bin) and E(PATH); an older
    one is a clear error.
author:
  - runbook.ops maintainers (@runbook-ops)
requirements:
  - psycopg (version 3)
  - zstandard (for zstd compression)
  - pyrage (for age encryption)
  - boto3 (for s3:// repositories)
  - the PostgreSQL client tools (pg_dump, pg_restore) on the managed host
extends_documentation_fragment:
  - runbook.ops.postgres
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
      - V(backup) connects, checks the client version and reports what it would store.
      - V(restore) checks the preconditions (target, sessions) and, with O(verify_first), reads and decrypts
        the whole backup, then reports what it would do without touching any database.
      - V(verify) reads only; at O(level=restore) the scratch restore is skipped and the archive level is run.
  diff_mode:
    support: partial
    description: V(backup) shows the latest backup id before and after; V(restore) the target database and the kept previous one.
options:
  db:
    description:
      - The database to back up, and the source whose set is restored or verified.
      - Taken literally. Refused when it holds a control character or is longer than 63 bytes (PostgreSQL
        would silently truncate it to another name). When O(set) is empty the set is O(db), which must then
        also be a valid set name (no C(/), no leading dot).
    type: str
    required: true
  state:
    description:
      - What to do.
      - V(dropped) drops O(target_db) (or O(db)) only when a restore with O(scratch=true) made it (its database comment
        says so); any other database is refused untouched. A database that does not exist is not a change.
    type: str
    choices: [backup, restore, verify, dropped]
    default: backup
  format:
    description:
      - V(custom) streams one C(pg_dump) custom-format archive (no local copy).
      - V(directory) runs C(pg_dump -j) O(jobs) into O(spool_dir) and stores each file of the dump directory as
        an object of the backup. Needs free space in O(spool_dir) for the uncompressed dump.
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description:
      - Parallel C(pg_dump) jobs for O(format=directory), and parallel C(pg_restore) jobs for V(restore);
        from 1 to 128.
      - A restore with more than one job spools the decrypted archive to O(spool_dir) first, because
        C(pg_restore) cannot run in parallel from a pipe.
    type: int
    default: 1
  spool_dir:
    description:
      - Where directory dumps and parallel restores are staged (a private 0700 directory is created inside and removed).
      - Empty means the system temporary directory.
    type: path
  schemas:
    description: Only these schemas (C(pg_dump --schema) patterns).
    type: list
    elements: str
    default: []
  exclude_schemas:
    description: Not these schemas (C(pg_dump --exclude-schema) patterns).
    type: list
    elements: str
    default: []
  tables:
    description: Only these tables (C(pg_dump --table) patterns); the schema filters then do not apply, as with C(pg_dump).
    type: list
    elements: str
    default: []
  exclude_tables:
    description: Not these tables (C(pg_dump --exclude-table) patterns).
    type: list
    elements: str
    default: []
  exclude_table_data:
    description: The definitions of these tables, without their rows (C(pg_dump --exclude-table-data) patterns).
    type: list
    elements: str
    default: []
  backup_id:
    description: For V(restore) and V(verify), the backup to use; empty means the latest complete backup of the set.
    type: str
  target_db:
    description:
      - For V(restore), the database to restore into; empty means O(db).
      - Taken literally, with the limits of O(db).
    type: str
  mode:
    description:
      - How V(restore) treats the target.
      - V(new) creates O(target_db), which must not exist; it is dropped again if the restore fails.
      - V(swap) restores into a temporary database, compares its row counts with the manifest, then renames
        O(target_db) (when it exists) to C(<target_db>_pre_<backup_id>) (a long target name is shortened to fit
        the 63-byte limit; the backup id is kept whole) and the temporary database to
        O(target_db). Until the renames, the target is not touched; a failure drops the temporary database.
      - V(clean) restores into the existing O(target_db) with C(pg_restore --clean --if-exists) in a single
        transaction (one job), so a failed restore is rolled back.
    type: str
    choices: [new, swap, clean]
    default: swap
  scratch:
    description:
      - With O(mode=new), mark the restored database as a scratch copy (a drill's) with a database comment, so that
        O(state=dropped) may drop it later. Needs O(mode=new).
    type: bool
    default: false
  keep_previous:
    description: With O(mode=swap), keep the replaced database as C(<target_db>_pre_<backup_id>); false drops it after the swap.
    type: bool
    default: true
  no_owner:
    description: Do not restore object ownership (C(pg_restore --no-owner)); the restoring role owns everything.
    type: bool
    default: false
  role:
    description:
      - Role name C(pg_restore) switches to (C(SET ROLE)) before restoring; taken literally, at most 63 bytes.
      - It must exist on the server; otherwise the restore fails before any database is touched.
    type: str
  verify_first:
    description:
      - Prove the backup (size and sha256 against the manifest, decryption and decompression to the end) before
        the target database is touched.
      - With O(mode=clean), which writes into the existing database, and in check mode, this is a separate full
        read of the backup before the restore starts.
      - O(mode=new) and O(mode=swap) restore into a database of their own, which is dropped when the stream fails
        its checksum or decryption at any point, before the target is renamed; the restoring pass is the proof and
        no second read is made, whatever this option says.
    type: bool
    default: true
  terminate_connections:
    description:
      - With O(mode=swap), end the sessions connected to O(target_db) before the rename.
      - When false and sessions exist, the restore fails before touching anything, naming them.
    type: bool
    default: false
  level:
    description:
      - How deep V(verify) goes.
      - V(checksum) compares the stored bytes with the manifest (size and sha256).
      - V(archive) also decrypts, decompresses and reads every block with C(pg_restore -f /dev/null), streamed.
      - V(restore) also restores into a scratch database on the same server, compares every table's row count with
        the manifest, and drops it.
    type: str
    choices: [checksum, archive, restore]
    default: archive
notes:
  - The S3 part size grows with the stream, so a database of several TiB fits in one multipart upload;
    a failed upload is aborted and no manifest is written, so the failed backup never counts.
  - O(format=custom) with O(jobs=1) restores straight from the stored stream into C(pg_restore).
  - What a killed run (SIGKILL, a lost host) leaves behind - the password file is never among it on Linux
    (see O(login_password)). A spool directory C(runbook-pg-dump-*), C(runbook-pg-restore-*) or
    C(runbook-pg-verify-*) under O(spool_dir) (unencrypted dump data; remove it); a temporary database
    C(<target_db>_restore_<random>) or C(<db>_verify_<random>) on the server (drop it); and, for a backup,
    an object without a manifest in the repository, which never counts as a backup and is reported as
    incomplete by M(runbook.ops.backup_repo). A kill in the instant between the two renames of O(mode=swap)
    leaves the live database under its C(<target_db>_pre_<backup_id>) name; rename it back.
seealso:
  - module: runbook.ops.backup_repo
"""

EXAMPLES = r"""
- name: Back up auth_service to S3, encrypted, at most every 6 hours, keeping 7 daily backups
  runbook.ops.pg_backup:
    login_host: db.example.internal
    login_user: backup
    login_password: "{{ vault_pg_backup_password }}"
    db: auth_service
    repository: s3://backups/platform
    encryption_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    max_age: 6h
    retention:
      keep_daily: 7
  register: backup

- name: Verify the latest backup by restoring it into a scratch database
  runbook.ops.pg_backup:
    login_host: db.example.internal
    login_user: backup
    login_password: "{{ vault_pg_backup_password }}"
    db: auth_service
    state: verify
    level: restore
    repository: s3://backups/platform
    encryption_identity: /etc/runbook/age-identity.txt

- name: Restore it next to the live database for inspection
  runbook.ops.pg_backup:
    login_host: db.example.internal
    login_user: postgres
    login_password: "{{ vault_pg_admin_password }}"
    db: auth_service
    state: restore
    mode: new
    target_db: auth_service_inspect
    repository: s3://backups/platform
    encryption_identity: /etc/runbook/age-identity.txt

- name: Disaster recovery - replace the live database, ending its sessions
  runbook.ops.pg_backup:
    login_host: db.example.internal
    login_user: postgres
    login_password: "{{ vault_pg_admin_password }}"
    db: auth_service
    state: restore
    mode: swap
    backup_id: "{{ backup.backup_id }}"
    terminate_connections: true
    jobs: 2
    repository: s3://backups/platform
    encryption_identity: /etc/runbook/age-identity.txt
"""

RETURN = r"""
backup_id:
  description: The backup written (V(backup)), restored or verified; for a skipped backup, the fresh one found.
  returned: always
  type: str
  sample: 20260131T120000Z-3fa9c1
manifest:
  description:
    - The backup's manifest (as stored in C(manifest.json)), with C(postgresql.row_counts) (exact rows per
      C(schema.table) in the dump's snapshot), C(source) (server version, database size, encoding, pg_dump
      version) and C(objects) (name, size, sha256 of every stored object).
  returned: when a backup was found or written
  type: dict
backup:
  description: A short summary of the backup written or found (id, set, sizes, encryption).
  returned: when O(state=backup)
  type: dict
skipped:
  description: True when O(max_age) found a fresh enough backup and nothing was done.
  returned: only then (never false; Ansible shows the task as skipped)
  type: bool
pruned:
  description: Backups removed by O(retention) after a successful backup (empty unless O(state=backup)).
  returned: always
  type: list
  elements: dict
restored_db:
  description: The database that now holds the restored data (null unless O(state=restore)).
  returned: always
  type: str
  sample: auth_service
dropped_db:
  description: For O(state=dropped), the scratch database dropped (or that would be in check mode); null when it did not exist.
  returned: when O(state=dropped)
  type: str
previous_db:
  description: With O(mode=swap) and O(keep_previous), the name the replaced database was renamed to; null otherwise.
  returned: always
  type: str
  sample: auth_service_pre_20260131T120000.042Z-3fa9c1
verified:
  description:
    - What was proven, one entry per backup verified (the same shape in every runbook.ops module); an empty list
      when nothing was verified (V(backup), or a restore in check mode with O(verify_first=false)).
    - V(verify) returns the entry of its level; V(restore) the row-count comparison of the restored database
      (level V(restore)), or in check mode the full read made by O(verify_first) (level V(archive)).
  returned: always
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup verified.
      type: str
    kind:
      description: Always V(postgresql).
      type: str
    set:
      description: The backup set.
      type: str
    level:
      description:
        - V(checksum) (stored bytes against the manifest), V(archive) (decrypted, decompressed and read by
          C(pg_restore)) or V(restore) (restored and every table's row count compared with the manifest).
        - In check mode, a V(verify) asked for V(restore) runs and reports V(archive).
      type: str
    ok:
      description: True when no problem was found.
      type: bool
    problems:
      description: What is wrong, each naming the object or table.
      type: list
      elements: str
    details:
      description:
        - Facts of the level. C(objects) is the number of stored objects; C(tables) the number of tables whose
          rows were counted; C(database) the database a restore wrote (O(target_db)).
      type: dict
diff:
  description:
    - With C(--diff) only. V(backup) shows the latest backup id of the set before and after; V(restore) the target
      database before, and after it the backup restored and the name the replaced database is kept under.
  returned: when run with C(--diff) and O(state=backup) or O(state=restore)
  type: dict
  contains:
    before:
      description: The state before the task.
      type: dict
    after:
      description: The state after the task.
      type: dict
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
throughput_mib_s:
  description: Uncompressed MiB of dump per second of the task (0 in check mode and for a skipped backup).
  returned: always
  type: float
msg:
  description: What was done (or, in check mode, would be done), in words; on failure, what failed and why.
  returned: always
  type: str
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import backup_job_argspec
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookModule, run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import tunnel_kubeconfig_secrets
from ansible_collections.runbook.ops.plugins.module_utils._pg_backup import PgBackupOptions, run_pg_backup
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import postgres_connection_argspec


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    spec = postgres_connection_argspec()
    spec.update(backup_job_argspec())
    spec.update(
        db=dict(type="str", required=True),
        state=dict(type="str", choices=["backup", "restore", "verify", "dropped"], default="backup"),
        format=dict(type="str", choices=["custom", "directory"], default="custom"),
        jobs=dict(type="int", default=1),
        spool_dir=dict(type="path"),
        schemas=dict(type="list", elements="str", default=[]),
        exclude_schemas=dict(type="list", elements="str", default=[]),
        tables=dict(type="list", elements="str", default=[]),
        exclude_tables=dict(type="list", elements="str", default=[]),
        exclude_table_data=dict(type="list", elements="str", default=[]),
        backup_id=dict(type="str"),
        target_db=dict(type="str"),
        mode=dict(type="str", choices=["new", "swap", "clean"], default="swap"),
        keep_previous=dict(type="bool", default=True),
        no_owner=dict(type="bool", default=False),
        role=dict(type="str"),
        verify_first=dict(type="bool", default=True),
        terminate_connections=dict(type="bool", default=False),
        scratch=dict(type="bool", default=False),
        level=dict(type="str", choices=["checksum", "archive", "restore"], default="archive"),
    )
    return dict(argument_spec=spec, supports_check_mode=True, sensitive=[tunnel_kubeconfig_secrets])


def main() -> None:
    module = RunbookModule(**module_args())
    run_task(module, PgBackupOptions.from_params, run_pg_backup)


if __name__ == "__main__":
    main()
