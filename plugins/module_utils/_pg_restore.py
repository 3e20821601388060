# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring a stored PostgreSQL backup into a database (``pg_backup state=restore``).

Three modes, each leaving the target as it was when anything fails:

* ``new`` creates the target (which must not exist) and drops it again on failure;
* ``swap`` restores into a temporary database, compares its row counts with the manifest, and
  only then renames the target out of the way (``<target>_pre_<backup_id>``) and the temporary
  database in; a failure before the renames drops the temporary database;
* ``clean`` restores into the existing target in one transaction, after a separate pass proved
  the whole backup readable (``verify_first``).
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import throughput_mib_s, verified_entry
from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Stopwatch, options_from
from ansible_collections.runbook.ops.plugins.module_utils._pg_archive import StoredBackup
from ansible_collections.runbook.ops.plugins.module_utils._pg_catalog import (
    SCRATCH_COMMENT_PREFIX, allow_connections, create_database, database_comment, database_exists, describe_sessions,
    drop_database, mark_scratch, previous_name, rename_database, role_exists, scratch_name, server_major, sessions_on,
    terminate_sessions)
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import PgConnection, import_psycopg
from ansible_collections.runbook.ops.plugins.module_utils._pg_tools import RestoreFlags

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

# With terminate_connections, a client that reconnects between our terminate and the rename gets
# this many more tries before the swap gives up.
RENAME_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    """The restore options of ``pg_backup``; ``target_db`` is already resolved (empty means ``db``)."""

    target_db: str
    mode: str
    keep_previous: bool
    no_owner: bool
    role: t.Optional[str]
    verify_first: bool
    terminate_connections: bool
    scratch: bool

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RestoreOptions":
        if params["scratch"] and (params["state"] != "restore" or params["mode"] != "new"):
            raise RunbookError("scratch=true needs state=restore and mode=new: only a database the restore creates "
                               "may be marked as a scratch copy")
        return options_from(cls, params, target_db=params["target_db"] or params["db"])

    def flags(self, clean: bool = False) -> RestoreFlags:
        return RestoreFlags(clean=clean, no_owner=self.no_owner, role=self.role)


class _NotTouched(Exception):
    """A swap failed before the target was renamed: the target is as it was."""

    def __init__(self, error: RunbookError) -> None:
        super().__init__(error.msg)
        self.error = error


class Restore:
    """One restore of ``stored`` into ``options.target_db`` on ``server``."""

    def __init__(self, stored: StoredBackup, server: PgConnection, options: RestoreOptions, *, jobs: int,
                 check_mode: bool) -> None:
        self.stored = stored
        self.server = server
        self.options = options
        self.jobs = jobs
        self.check_mode = check_mode

    @property
    def target(self) -> str:
        return self.options.target_db

    def run(self) -> Result:
        watch = Stopwatch()
        stored = self.stored
        stored.identities()  # an encrypted backup without its key fails before any connection
        connection = self.server.maintenance()
        try:
            cur = connection.cursor()
            pg_restore = stored.pg_restore_for(self.server, server_major(cur))
            exists = database_exists(cur, self.target)
            previous = self._preconditions(cur, exists)
            kept = previous if previous and self.options.keep_previous else None
            result: Result = {
                "changed": True, "backup_id": stored.id, "manifest": stored.manifest, "pruned": [],
                "restored_db": self.target, "previous_db": None, "verified": self._verify_first(),
                "diff": {"before": {"database": self.target if exists else None},
                         "after": {"database": self.target, "from_backup": stored.id, "previous_db": kept}}}
            if self.check_mode:
                result.update(previous_db=kept, duration_s=watch.elapsed, throughput_mib_s=0.0,
                              msg="would restore backup %s into database %s on %s (mode %s)"
                              % (stored.id, self.target, self.server.where, self.options.mode))
                return result
            result.update(self._restore(cur, pg_restore, previous))
        finally:
            connection.close()
        result.update(duration_s=watch.elapsed,
                      throughput_mib_s=throughput_mib_s(stored.manifest.get("raw_size", 0), watch.elapsed),
                      msg="restored backup %s into database %s on %s (mode %s)"
                      % (stored.id, self.target, self.server.where, self.options.mode))
        return result

    def _preconditions(self, cur: "psycopg.Cursor[t.Any]", exists: bool) -> t.Optional[str]:
        """Refuse what the mode cannot do before anything is touched; the name the target will be
        kept under by a swap, if it exists."""
        target, mode, where = self.target, self.options.mode, self.server.where
        role = self.options.role
        if role and not role_exists(cur, role):
            raise RunbookError('restore: role "%s" (option role, which pg_restore switches to) does not exist on %s; '
                               'database "%s" was not touched' % (role, where, target))
        if mode == "new" and exists:
            raise RunbookError('restore mode=new: database "%s" already exists on %s; choose another '
                               "target_db or mode=swap/clean" % (target, where))
        if mode == "clean" and not exists:
            raise RunbookError('restore mode=clean: database "%s" does not exist on %s; it was not created '
                               "(use mode=new or mode=swap to restore into a new database)" % (target, where))
        if mode != "swap" or not exists:
            return None
        previous = previous_name(target, self.stored.id)
        if database_exists(cur, previous):
            raise RunbookError('restore mode=swap: database "%s" (kept by an earlier swap of this backup) '
                               "already exists on %s; drop or rename it first" % (previous, where))
        self._check_sessions(cur)
        return previous

    def _verify_first(self) -> t.List[t.Dict[str, t.Any]]:
        """clean writes into the live database: prove the whole backup in a separate pass first. new
        and swap restore into a database of their own (dropped on failure) and the stream's checksum
        is proven when it ends, before the target is touched: no second read is needed. Check mode
        proves it too, as it restores nothing."""
        if not self.options.verify_first or (self.options.mode != "clean" and not self.check_mode):
            return []
        problems = self.stored.stream_problems()
        entry = verified_entry(self.stored.manifest, "archive", problems,
                               objects=len(self.stored.manifest.get("objects", [])))
        if problems:
            raise RunbookError('restore of backup %s refused: verification failed, database "%s" was not '
                               "touched: %s" % (self.stored.id, self.target, "; ".join(problems)),
                               backup_id=self.stored.id, verified=[entry])
        return [entry]

    def _restore_into(self, dbname: str, pg_restore: str, clean: bool = False) -> None:
        self.stored.restore_into(self.server, dbname, pg_restore=pg_restore, flags=self.options.flags(clean),
                                 jobs=self.jobs)

    def _restore(self, cur: "psycopg.Cursor[t.Any]", pg_restore: str, previous: t.Optional[str]) -> Result:
        """The restore itself, by mode: the ``verified`` entry and the kept ``previous_db``."""
        if self.options.mode == "clean":
            self._restore_into(self.target, pg_restore, clean=True)
            return {"verified": [self._verified_counts(self.target)]}
        if self.options.mode == "new":
            return {"verified": [self._restore_new(cur, pg_restore)]}
        try:
            return self._swap(cur, pg_restore, previous)
        except _NotTouched as exc:
            raise RunbookError('restore of backup %s failed, database "%s" was not touched: %s'
                               % (self.stored.id, self.target, exc.error.msg), **exc.error.details)

    def _owner(self, cur: "psycopg.Cursor[t.Any]") -> t.Optional[str]:
        owner = self.stored.source.get("owner")
        if owner and not self.options.no_owner and role_exists(cur, owner):
            return str(owner)
        return None

    def _verified_counts(self, dbname: str) -> t.Dict[str, t.Any]:
        """Row counts of the restored ``dbname`` against the manifest; a mismatch fails the restore."""
        problems = self.stored.row_count_problems(self.server, dbname)
        entry = verified_entry(self.stored.manifest, "restore", problems, database=self.target,
                               tables=len(self.stored.row_counts))
        if problems:
            raise RunbookError("restored database %s does not match backup %s: %s"
                               % (dbname, self.stored.id, "; ".join(problems)), verified=[entry])
        return entry

    def _restore_new(self, cur: "psycopg.Cursor[t.Any]", pg_restore: str) -> t.Dict[str, t.Any]:
        create_database(cur, self.target, self.stored.source, self._owner(cur))
        try:
            if self.options.scratch:
                mark_scratch(cur, self.target, self.stored.id)
            self._restore_into(self.target, pg_restore)
            return self._verified_counts(self.target)
        except RunbookError as exc:
            drop_database(cur, self.target)
            raise RunbookError('restore of backup %s into new database "%s" failed (it was dropped again): %s'
                               % (self.stored.id, self.target, exc.msg), **exc.details)
        except BaseException:
            drop_database(cur, self.target)
            raise

    def _check_sessions(self, cur: "psycopg.Cursor[t.Any]") -> None:
        sessions = sessions_on(cur, self.target)
        if sessions and not self.options.terminate_connections:
            raise RunbookError('restore mode=swap: database "%s" on %s has %d open session(s): %s; stop the clients '
                               "or set terminate_connections=true" % (self.target, self.server.where, len(sessions),
                                                                      describe_sessions(sessions)),
                               sessions=sessions)

    def _swap(self, cur: "psycopg.Cursor[t.Any]", pg_restore: str, previous: t.Optional[str]) -> Result:
        temp = scratch_name(self.target, "restore")
        create_database(cur, temp, self.stored.source, self._owner(cur))
        try:
            try:
                self._restore_into(temp, pg_restore)
                verified = self._verified_counts(temp)
            except RunbookError as exc:
                raise _NotTouched(exc)
            if previous is not None:
                self._check_sessions(cur)
                self._rename_out(cur, previous)
            try:
                rename_database(cur, temp, self.target)
            except Exception:
                if previous is not None:
                    rename_database(cur, previous, self.target)
                    allow_connections(cur, self.target, True)
                raise
        except BaseException:
            drop_database(cur, temp)
            raise
        kept = None
        if previous is not None and self.options.keep_previous:
            allow_connections(cur, previous, True)
            kept = previous
        elif previous is not None:
            drop_database(cur, previous)
        return {"verified": [verified], "previous_db": kept}

    def _rename_out(self, cur: "psycopg.Cursor[t.Any]", previous: str) -> None:
        """Rename the live database out of the way; with terminate_connections, refuse new sessions,
        end the current ones and retry while a client races back in."""
        psycopg = import_psycopg()
        terminate = self.options.terminate_connections
        if terminate:
            allow_connections(cur, self.target, False)
        try:
            for attempt in range(RENAME_ATTEMPTS):
                if terminate:
                    terminate_sessions(cur, self.target)
                try:
                    rename_database(cur, self.target, previous)
                    return
                except psycopg.errors.ObjectInUse:
                    if not terminate or attempt == RENAME_ATTEMPTS - 1:
                        sessions = sessions_on(cur, self.target)
                        raise RunbookError('restore mode=swap: cannot rename database "%s" on %s: open session(s): '
                                           "%s" % (self.target, self.server.where, describe_sessions(sessions)),
                                           sessions=sessions)
                    time.sleep(0.2)
        except BaseException:
            if terminate:
                allow_connections(cur, self.target, True)
            raise


def drop_scratch(server: PgConnection, name: str, check_mode: bool) -> Result:
    """``state=dropped``: drop ``name`` only when a scratch restore made it (its comment says so);
    any other database is refused untouched, so a wrong name can never drop live data."""
    connection = server.maintenance()
    try:
        cur = connection.cursor()
        comment = database_comment(cur, name)
        if comment is None:
            return {"changed": False, "dropped_db": None,
                    "msg": 'database "%s" does not exist on %s; nothing to drop' % (name, server.where)}
        if not comment.startswith(SCRATCH_COMMENT_PREFIX):
            raise RunbookError('database "%s" on %s is not a scratch restore (its comment does not say so); '
                               "it was not dropped" % (name, server.where))
        result: Result = {"changed": True, "dropped_db": name,
                          "diff": {"before": {"database": name}, "after": {"database": None}}}
        if check_mode:
            return dict(result, msg='would drop scratch database "%s" on %s' % (name, server.where))
        drop_database(cur, name)
    finally:
        connection.close()
    return dict(result, msg='dropped scratch database "%s" on %s' % (name, server.where))
