# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL's part of a credential rotation (``runbook.ops.pg_credential_rotate``).

The password reaches the server only as a SCRAM-SHA-256 verifier computed here (RFC 5802/7677, the
form PostgreSQL stores in ``pg_authid``), inside a transaction that first turns statement logging
and statement statistics off for itself (``set_config(..., true)``, superuser settings; a login
without the right is warned about). Strategies: ``single`` (a new password on the role: the previous
one stops working at once) and ``alternating`` (two login roles in one group role that owns the
grants; the idle one gets the new password and the Secret points at it; the other keeps working
until it is revoked with ``NOLOGIN``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task
from ansible_collections.runbook.ops.plugins.module_utils._credentials import (
    Login, RotationOptions, rotate_credential,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import pg_name
from ansible_collections.runbook.ops.plugins.module_utils._pg_connection import (
    PgConnection, PgConnectionOptions, import_psycopg, open_endpoint,
)

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

SCRAM_ITERATIONS = 4096
# Settings that would copy the ALTER ROLE statement (and its verifier) into the log or statistics.
QUIET_SETTINGS = (("log_statement", "none"), ("log_min_duration_statement", "-1"), ("log_duration", "off"),
                  ("log_min_error_statement", "panic"), ("pg_stat_statements.track", "none"),
                  ("pg_stat_statements.track_utility", "off"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_verifier(password: str, salt: t.Optional[bytes] = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` for an ASCII ``password``
    (SASLprep leaves printable ASCII unchanged)."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, _b64(salt), _b64(hashlib.sha256(client_key).digest()),
                                          _b64(server_key))


def verifier_matches(password: str, verifier: str) -> t.Optional[bool]:
    """Whether ``password`` fits a stored SCRAM verifier; None when it cannot be told here (another
    format, or a non-ASCII password that SASLprep might change)."""
    if not verifier.startswith("SCRAM-SHA-256$") or not password.isascii():
        return None
    try:
        head, keys = verifier[len("SCRAM-SHA-256$"):].split("$", 1)
        iterations, salt = head.split(":", 1)
        expected = scram_verifier(password, base64.b64decode(salt), int(iterations))
    except ValueError:
        return None
    return hmac.compare_digest(expected.encode("ascii"), verifier.encode("ascii", "replace"))


@dataclasses.dataclass(frozen=True)
class PgRotateOptions:
    connection: PgConnectionOptions
    rotation: RotationOptions
    role: str
    strategy: str
    second_role: str
    group_role: t.Optional[str]
    database: str

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "PgRotateOptions":
        role = pg_name("role", params["role"])
        second = pg_name("second_role", params["second_role"] or role + "_b")
        if second == role:
            raise RunbookError("second_role must differ from role")
        group = pg_name("group_role", params["group_role"]) if params["group_role"] else None
        if group in (role, second):
            raise RunbookError("group_role must differ from the login roles")
        # The PostgreSQL CA option is ssl_rootcert here: ca_cert is the Kubernetes one.
        connection = PgConnectionOptions.from_params(dict(params, ca_cert=params["ssl_rootcert"]))
        rotation = RotationOptions.from_params(params)
        if params["strategy"] == "alternating" and not rotation.secret.user_key:
            raise RunbookError("strategy alternating needs secret.user_key: the Secret must say which of the two roles is current")
        return cls(connection=connection, rotation=rotation, role=role,
                   strategy=params["strategy"], second_role=second, group_role=group,
                   database=pg_name("database", params["database"]))


class PgService:
    """A PostgreSQL server seen through the admin login (one connection, opened when first needed)."""

    kind = "PostgreSQL role"

    def __init__(self, task: Task[PgRotateOptions]) -> None:
        self.task = task
        self.opts = task.options
        self.overlap = self.opts.strategy == "alternating"
        self._pg: t.Optional[PgConnection] = None
        self._admin: t.Optional["psycopg.Connection[t.Any]"] = None

    @property
    def pg(self) -> PgConnection:
        if self._pg is None:
            self._pg = PgConnection(self.opts.connection, "pg_credential_rotate",
                                    open_endpoint(self.task, self.opts.connection))
        return self._pg

    def admin(self) -> "psycopg.Connection[t.Any]":
        if self._admin is None:
            self._admin = self.task.adopt(self.pg.connect(self.opts.database))
        return self._admin

    def in_sync(self, login: Login) -> bool:
        library = import_psycopg()
        try:
            with self.admin().cursor() as cur:
                cur.execute("SELECT rolpassword, rolcanlogin FROM pg_authid WHERE rolname = %s", (login.user,))
                row = cur.fetchone()
        except library.errors.InsufficientPrivilege:
            return self.works(login)  # pg_authid is for superusers: try the login instead
        if row is None or not row[1] or row[0] is None:
            return False
        matches = verifier_matches(login.password, row[0])
        return self.works(login) if matches is None else matches

    def next_user(self, current: str) -> str:
        opts = self.opts
        if opts.strategy == "single":
            if current != opts.role:
                raise RunbookError("the Secret names user %s, not role %s (strategy single)" % (current, opts.role))
            return opts.role
        pair = {opts.role: opts.second_role, opts.second_role: opts.role}
        if current not in pair:
            raise RunbookError("the Secret names user %s, neither %s nor %s (strategy alternating)"
                               % (current, opts.role, opts.second_role))
        return pair[current]

    def works(self, login: Login) -> bool:
        options = dataclasses.replace(self.opts.connection, login_user=login.user, login_password=login.password)
        try:
            PgConnection(options, "pg_credential_rotate", self.pg.endpoint).connect(self.opts.database).close()
        except RunbookError:
            return False
        return True

    def apply(self, login: Login) -> None:
        library = import_psycopg()
        from psycopg import sql

        conn = self.admin()
        try:
            with conn.transaction(), conn.cursor() as cur:
                self._quiet(conn, cur)
                if self.opts.strategy == "alternating":
                    self._ensure_member(cur, login.user)
                cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.Identifier(login.user), sql.Literal(scram_verifier(login.password))))
        except library.Error as exc:
            # The message never holds the verifier: PostgreSQL does not echo a statement in its errors.
            raise RunbookError("setting the new password of role %s on %s failed: %s"
                               % (login.user, self.pg.where, str(exc).strip().splitlines()[0]))

    def _quiet(self, conn: "psycopg.Connection[t.Any]", cur: "psycopg.Cursor[t.Any]") -> None:
        library = import_psycopg()
        cur.execute("SELECT name FROM pg_settings WHERE name = ANY(%s)", ([name for name, _value in QUIET_SETTINGS],))
        known = {row[0] for row in cur.fetchall()}
        refused = []
        for name, value in QUIET_SETTINGS:
            if name not in known:
                continue
            try:
                with conn.transaction():
                    cur.execute("SELECT set_config(%s, %s, true)", (name, value))
            except library.errors.InsufficientPrivilege:
                refused.append(name)
        if refused:
            self.task.warn("%s could not turn off %s for the password change (a superuser setting): the server may "
                           "log the SCRAM verifier, never the password" % (self.opts.connection.login_user, ", ".join(refused)))

    def _ensure_member(self, cur: "psycopg.Cursor[t.Any]", user: str) -> None:
        from psycopg import sql

        group = t.cast(str, self.opts.group_role)
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", ([user, group],))
        found = {row[0] for row in cur.fetchall()}
        if group not in found:
            raise RunbookError("group role %s does not exist on %s; create it and grant it what the application "
                               "needs (both login roles become its members)" % (group, self.pg.where))
        if user not in found:
            cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(user)))
        cur.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (user, group))
        row = cur.fetchone()
        if not (row and row[0]):
            cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(user)))

    def revoke(self, previous: Login, current: Login) -> bool:
        if previous.password == current.password and previous.user == current.user:
            return False
        if self.opts.strategy == "single" or previous.user == current.user:
            return True  # the new password replaced the previous one when it was set
        library = import_psycopg()
        from psycopg import sql

        try:
            with self.admin().cursor() as cur:
                cur.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(previous.user)))
        except library.Error as exc:
            raise RunbookError("disabling the login of role %s failed: %s" % (previous.user, str(exc).strip()))
        return True


def run_pg_credential_rotate(task: Task[PgRotateOptions]) -> Result:
    opts = task.options
    result = rotate_credential(task, PgService(task), opts.rotation, opts.role)
    result["strategy"] = opts.strategy
    return result
