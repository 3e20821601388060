# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work of ``pg_backup``: its options (:class:`PgBackupOptions`), the entry point
(:func:`run_pg_backup`), the backup and the verification. Restores are in ``_pg_restore``.

Backup (custom format): one connection opens a REPEATABLE READ transaction and exports its
snapshot; ``pg_dump -Fc -Z0 --snapshot=...`` streams the database through our compression and
encryption into the repository while the same transaction counts every dumped table's rows
exactly (same snapshot, so the counts describe exactly the dumped data). Directory format
(``jobs`` > 1) dumps into a 0700 spool directory and stores one object per file.

Every user-given name and number is checked when the options are built (:meth:`PgBackupOptions.from_params`),
before anything connects or reads the repository.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import (
    UNENCRYPTED_WARNING, BackupJobOptions, backup_result, fresh_backup, prune_after_success, throughput_mib_s,
    verified_entry)
from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Stopwatch, Task, options_from)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    human_seconds, check_params, int_in, no_control, optional, path_segment, pg_name, shown)
from ansible_collections.runbook.ops.plugins.module_utils._pg_archive import (
    CUSTOM_OBJECT, KIND, Spool, StoredBackup)
from ansible_collections.runbook.ops.plugins.module_utils._pg_catalog import (
    count_rows, create_database, database_facts, drop_database, list_tables, scratch_name, server_major)
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (
    PgConnection, PgConnectionOptions, open_endpoint)
from ansible_collections.runbook.ops.plugins.module_utils._pg_restore import Restore, RestoreOptions, drop_scratch
from ansible_collections.runbook.ops.plugins.module_utils._pg_tools import (
    ClientEnv, DumpFilters, Version, dump_argv, find_binary, run_tool)
from ansible_collections.runbook.ops.plugins.module_utils._repository import (
    BackupWriter, Repository, name_rules)
from ansible_collections.runbook.ops.plugins.module_utils._stream import StreamError, SubprocessSource, parse_recipients

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

APPLICATION = "pg_backup"
MAX_JOBS = 128
PATTERN_OPTIONS = ("schemas", "exclude_schemas", "tables", "exclude_tables", "exclude_table_data")


def name_checks() -> t.Dict[str, t.Callable[[str, t.Any], t.Any]]:
    """Validators of ``pg_backup``'s own names and patterns (the connection's are in ``_pg_connection``)."""
    rules: t.Dict[str, t.Callable[[str, t.Any], t.Any]] = dict(name_rules())
    rules.update(db=pg_name, target_db=optional(pg_name), role=optional(pg_name))
    rules.update({option: no_control for option in PATTERN_OPTIONS})
    return rules


@dataclasses.dataclass(frozen=True)
class PgBackupOptions:
    """The validated options of one ``pg_backup`` task."""

    db: str
    state: str
    format: str
    jobs: int
    spool_dir: t.Optional[str]
    backup_id: t.Optional[str]
    level: str
    connection: PgConnectionOptions
    job: BackupJobOptions
    filters: DumpFilters
    restore: RestoreOptions
    encryption_identity: t.Optional[str] = dataclasses.field(repr=False)

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "PgBackupOptions":
        connection = PgConnectionOptions.from_params(params)
        check_params(params, name_checks())
        int_in("jobs", params["jobs"], 1, MAX_JOBS)
        job = BackupJobOptions.from_params(params)
        if not job.set:
            try:
                path_segment("set", params["db"])
            except RunbookError as exc:
                raise RunbookError("db %s cannot name the backup set (the set defaults to db): %s; set the option "
                                   "set to a plain name" % (shown(params["db"]), exc.msg))
        if params["state"] == "backup" and params["format"] == "custom" and params["jobs"] > 1:
            raise RunbookError("jobs=%d needs format=directory: pg_dump dumps in parallel only into a directory"
                               % params["jobs"])
        return options_from(
            cls, params, connection=connection, job=job, restore=RestoreOptions.from_params(params),
            filters=options_from(DumpFilters, params))

    @property
    def set_name(self) -> str:
        """The backup set: the option ``set``, else the database name."""
        return self.job.set or self.db


def run_pg_backup(task: Task[PgBackupOptions]) -> Result:
    """``pg_backup``: back up, verify or restore, as ``state`` says."""
    opts = task.options
    # Checksum and archive verification read the repository only: no server, so no tunnel to open.
    needs_server = opts.state != "verify" or opts.level == "restore"
    server = PgConnection(opts.connection, APPLICATION,
                          endpoint=open_endpoint(task, opts.connection) if needs_server else None)
    if opts.state == "dropped":
        return _not_a_restore(drop_scratch(server, opts.restore.target_db, task.check_mode))
    repo = task.client(Repository.from_options)
    if opts.state == "backup":
        return Backup(task, server, repo).run()
    stored = StoredBackup.find(repo, set_name=opts.set_name, backup_id=opts.backup_id,
                               identity=opts.encryption_identity, spool_dir=opts.spool_dir)
    if opts.state == "verify":
        return verify(task, server, stored)
    return Restore(stored, server, opts.restore, jobs=opts.jobs, check_mode=task.check_mode).run()


def _not_a_restore(result: Result) -> Result:
    result.setdefault("verified", [])
    result.setdefault("restored_db", None)
    result.setdefault("previous_db", None)
    return result


# --------------------------------------------------------------------------- backup

@dataclasses.dataclass(frozen=True)
class DumpPlan:
    """What one dump will read, decided inside the exported snapshot before pg_dump starts."""

    pg_dump: str
    pg_dump_version: Version
    snapshot: str
    facts: t.Dict[str, t.Any]
    with_data: t.List[str]
    schema_only: t.List[str]


class _CountThread:
    """Exact row counts in the exported snapshot, taken on the snapshot's own connection while
    pg_dump streams (the connection is not used by anything else meanwhile)."""

    def __init__(self, cur: "psycopg.Cursor[t.Any]", tables: t.Sequence[str]) -> None:
        self.cur = cur
        self.tables = list(tables)
        self.counts: t.Dict[str, int] = {}
        self.error: t.Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.counts = count_rows(self.cur, self.tables)
        except BaseException as exc:  # pylint: disable=broad-except
            self.error = exc

    def result(self, db: str, where: str) -> t.Dict[str, int]:
        self.thread.join()
        if self.error is not None:
            raise StreamError("row count", 'counting rows of database "%s" on %s: %s' % (db, where, self.error))
        return self.counts


class Backup:
    """One backup of ``options.db`` into the repository (or, in check mode, the plan of one)."""

    def __init__(self, task: Task[PgBackupOptions], server: PgConnection, repo: Repository) -> None:
        self.task = task
        self.opts = task.options
        self.server = server
        self.repo = repo

    def run(self) -> Result:
        watch = Stopwatch()
        opts = self.opts
        fresh = fresh_backup(self.repo, KIND, opts.set_name, opts.job.max_age)
        if fresh is not None:
            result = backup_result(fresh, watch.elapsed, skipped=True)
            result["msg"] = "backup %s of set %s finished less than %s ago: nothing to do" % (
                fresh["id"], opts.set_name, human_seconds(opts.job.max_age or 0))
            return _not_a_restore(result)
        if not opts.job.encryption_recipients:
            self.task.warn(UNENCRYPTED_WARNING)
        parse_recipients(opts.job.encryption_recipients)  # bad keys fail before the dump starts
        latest = self.repo.latest(KIND, opts.set_name) if self.task.diff else None
        before = {"latest_backup": latest["id"] if latest else None}
        connection = self.server.connect(opts.db, autocommit=True)
        try:
            cur = connection.cursor()
            plan = self._plan(cur)
            if self.task.check_mode:
                result = backup_result(None, watch.elapsed)
                result.update(changed=True, msg="would back up database %s (%d bytes, %d tables) on %s into %s"
                              % (opts.db, plan.facts["database_size"], len(plan.with_data) + len(plan.schema_only),
                                 self.server.where, self.repo.url),
                              diff={"before": before, "after": {"latest_backup": "(new backup of %s)" % opts.db}})
                return _not_a_restore(result)
            manifest = self._store(cur, plan)
        finally:
            connection.close()
        pruned = prune_after_success(self.repo, KIND, opts.set_name, opts.job.retention)
        result = backup_result(manifest, watch.elapsed, pruned=pruned)
        counts = manifest["postgresql"]["row_counts"]
        result.update(msg="backed up database %s (%d tables, %d rows) to %s as %s" % (
            opts.db, len(counts), sum(counts.values()), self.repo.url, manifest["id"]),
            diff={"before": before, "after": {"latest_backup": manifest["id"]}})
        return _not_a_restore(result)

    def _plan(self, cur: "psycopg.Cursor[t.Any]") -> DumpPlan:
        facts = database_facts(cur)
        pg_dump, version = find_binary("pg_dump", facts["server_major"], self.server.where)
        # The snapshot is exported before the tables are listed: the list, the counts and the
        # dump all see the same database.
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_export_snapshot()")
        row = cur.fetchone()
        if row is None:
            raise RunbookError("pg_export_snapshot() returned nothing on %s" % self.server.where)
        with_data, schema_only = self.opts.filters.select(list_tables(cur))
        return DumpPlan(pg_dump=pg_dump, pg_dump_version=version, snapshot=str(row[0]), facts=facts,
                        with_data=with_data, schema_only=schema_only)

    def _store(self, cur: "psycopg.Cursor[t.Any]", plan: DumpPlan) -> t.Dict[str, t.Any]:
        """Dump, count in the same snapshot, and commit the backup with its manifest."""
        opts = self.opts
        with ClientEnv(self.server, opts.db) as client:
            with self.repo.new_backup(KIND, opts.set_name, opts.job.labels) as writer:
                counts = _CountThread(cur, plan.with_data)
                if opts.format == "custom":
                    self._dump_custom(writer, client, plan, counts)
                else:
                    counts.start()
                    self._dump_directory(writer, client, plan)
                row_counts = counts.result(opts.db, self.server.where)
                cur.execute("COMMIT")
                self.task.verify_clients()  # a tunnel that broke mid-dump fails the backup here
                return writer.commit(
                    source=self._source_facts(plan), fmt=opts.format, compression=opts.job.compression_settings,
                    extra={"postgresql": {"row_counts": row_counts, "schema_only_tables": plan.schema_only,
                                          "filters": opts.filters.given(), "dump_format": opts.format,
                                          "jobs": opts.jobs if opts.format == "directory" else 1}})

    def _source_facts(self, plan: DumpPlan) -> t.Dict[str, t.Any]:
        facts = plan.facts
        endpoint = self.server.endpoint
        return {"host": endpoint.host or "local socket", "database": self.opts.db,
                "port": self.opts.connection.login_port if endpoint.via else endpoint.port,
                "kubernetes_tunnel": endpoint.via or None,
                "server_version": facts["server_version"], "server_version_num": facts["server_version_num"],
                "database_size": facts["database_size"], "encoding": facts["encoding"], "collate": facts["collate"],
                "ctype": facts["ctype"], "owner": facts["owner"], "pg_dump_version": "%d.%d" % plan.pg_dump_version}

    def _add(self, writer: BackupWriter, name: str, stream: t.Any, size_hint: int) -> None:
        job = self.opts.job
        writer.add_object(name, stream, compression=job.compression, level=job.compression_level,
                          threads=job.compression_threads, recipients=job.encryption_recipients, size_hint=size_hint)

    def _dump_custom(self, writer: BackupWriter, client: ClientEnv, plan: DumpPlan, counts: _CountThread) -> None:
        argv = dump_argv(plan.pg_dump, fmt="custom", filters=self.opts.filters, dbname_arg=client.dbname_arg,
                         snapshot=plan.snapshot)
        with SubprocessSource(argv, env=client.env(), name="pg_dump") as source:
            counts.start()  # pg_dump imports the snapshot at start; the counts run in it meanwhile
            self._add(writer, CUSTOM_OBJECT, source.stdout, plan.facts["database_size"])
            source.finish()

    def _dump_directory(self, writer: BackupWriter, client: ClientEnv, plan: DumpPlan) -> None:
        with Spool(self.opts.spool_dir, "dump") as spool:
            path = os.path.join(spool.path, "dump")
            run_tool(dump_argv(plan.pg_dump, fmt="directory", filters=self.opts.filters, dbname_arg=client.dbname_arg,
                               snapshot=plan.snapshot, jobs=self.opts.jobs, path=path), "pg_dump", env=client.env())
            for name in sorted(os.listdir(path), key=lambda n: (n != "toc.dat", n)):
                with open(os.path.join(path, name), "rb") as handle:
                    self._add(writer, name, handle, os.path.getsize(os.path.join(path, name)))


# --------------------------------------------------------------------------- verify

def verify(task: Task[PgBackupOptions], server: PgConnection, stored: StoredBackup) -> Result:
    """Check ``stored`` at ``level``: ``checksum`` (stored bytes), ``archive`` (every block read by
    pg_restore), ``restore`` (restored into a scratch database and every row count compared)."""
    watch = Stopwatch()
    level = task.options.level
    details: t.Dict[str, t.Any] = {"objects": len(stored.manifest.get("objects", []))}
    notes = []
    # The archive pass checks size and sha256 too (at the end of each object): one read suffices.
    problems = stored.checksum_problems() if level == "checksum" else []
    if level in ("archive", "restore"):
        stored.identities()
        connection = server.maintenance()
        try:
            major = server_major(connection.cursor())
        finally:
            connection.close()
        pg_restore = stored.pg_restore_for(server, major)
        try:
            stored.check_archive(pg_restore)
        except RunbookError as exc:
            problems.append(exc.msg)
        if not problems and level == "restore" and task.check_mode:
            level = "archive"
            notes.append("check mode: the scratch restore was skipped (it would create a database)")
        elif not problems and level == "restore":
            problems += _scratch_restore(task.options, server, stored, pg_restore)
            details["tables"] = len(stored.row_counts)
    result = _not_a_restore({
        "changed": False, "backup_id": stored.id, "manifest": stored.manifest, "pruned": [],
        "verified": [verified_entry(stored.manifest, level, problems, **details)], "duration_s": watch.elapsed,
        "throughput_mib_s": throughput_mib_s(stored.manifest.get("raw_size", 0), watch.elapsed)})
    if problems:
        raise RunbookError("verify (%s) of backup %s of set %s failed: %s"
                           % (level, stored.id, task.options.set_name, "; ".join(problems)), **result)
    result["msg"] = "backup %s of set %s verified at level %s" % (stored.id, task.options.set_name, level)
    if notes:
        result["msg"] += " (%s)" % "; ".join(notes)
    return result


def _scratch_restore(opts: PgBackupOptions, server: PgConnection, stored: StoredBackup, pg_restore: str) -> t.List[str]:
    """Restore into a scratch database named after ``db``, compare every row count, drop it."""
    name = scratch_name(opts.db, "verify")
    connection = server.maintenance()
    try:
        cur = connection.cursor()
        create_database(cur, name, stored.source, None)
        try:
            stored.restore_into(server, name, pg_restore=pg_restore, flags=opts.restore.flags(), jobs=opts.jobs)
            return stored.row_count_problems(server, name)
        except RunbookError as exc:
            return ["restore into scratch database %s: %s" % (name, exc.msg)]
        finally:
            drop_database(cur, name)
    finally:
        connection.close()
