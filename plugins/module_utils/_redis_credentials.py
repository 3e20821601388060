# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis's part of a credential rotation (``runbook.ops.redis_credential_rotate``).

An ACL user may hold several passwords: ``ACL SETUSER user >new`` adds the new one while the old one
keeps working, the consumers move, and ``ACL SETUSER user <old`` removes it. Both changes are
persisted with ``ACL SAVE`` when the server keeps its users in an ACL file. A server that only has
``requirepass`` is the ``default`` user: the same commands apply (Redis 6 and later keep several
passwords for it too), and the change is persisted with ``CONFIG REWRITE``, which writes the users
into the configuration file as SHA-256 hashes; once the previous password is removed,
``requirepass`` is pointed at the new one first, so the file names no revoked password. A server with
neither file keeps the change in memory only (warned about). Connections authenticated before the
old password was removed stay authenticated (Redis checks passwords only at ``AUTH``).
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task
from ansible_collections.runbook.ops.plugins.module_utils._credentials import (
    Login, RotationOptions, rotate_credential,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import no_control
from ansible_collections.runbook.ops.plugins.module_utils._redis_client import (
    RedisConnection, RedisConnectionOptions, RedisReplyError, permission_error, reach,
)

NO_ACL_FILE = "not configured to use an ACL file"
DEFAULT_USER = "default"


@dataclasses.dataclass(frozen=True)
class RedisRotateOptions:
    connection: RedisConnectionOptions
    rotation: RotationOptions
    user: str

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RedisRotateOptions":
        user = no_control("user", params["user"])
        if not user or " " in user:
            raise RunbookError("user must be one ACL user name (no spaces)")
        # validate_certs is the Kubernetes option here; Redis's own is tls_validate_certs.
        connection = RedisConnectionOptions.from_params(dict(params, validate_certs=params["tls_validate_certs"]))
        return cls(connection=connection, rotation=RotationOptions.from_params(params), user=user)


class RedisService:
    """A Redis server seen through the admin login (one connection, opened when first needed)."""

    kind = "Redis ACL user"
    overlap = True

    def __init__(self, task: Task[RedisRotateOptions]) -> None:
        self.task = task
        self.opts = task.options
        self._options: t.Optional[RedisConnectionOptions] = None
        self._admin: t.Optional[RedisConnection] = None

    @property
    def options(self) -> RedisConnectionOptions:
        if self._options is None:
            self._options = reach(self.task, self.opts.connection)
        return self._options

    def admin(self) -> RedisConnection:
        if self._admin is None:
            self._admin = self.task.adopt(self.options.connect())
        return self._admin

    def in_sync(self, login: Login) -> bool:
        return self.works(login)

    def next_user(self, current: str) -> str:
        if current != self.opts.user:
            raise RunbookError("the Secret names user %s, not the ACL user %s" % (current, self.opts.user))
        return current

    def works(self, login: Login) -> bool:
        options = dataclasses.replace(self.options, login_user=login.user, login_password=login.password)
        try:
            with options.connect() as conn:
                conn.call("PING")
        except RunbookError as exc:
            if "authentication" in exc.msg:
                return False
            raise
        return True

    def _setuser(self, user: str, rule_prefix: str, password: str) -> RedisReplyError:
        """``ACL SETUSER user <prefix><password>``; the error reply (never holding the password) or raise."""
        conn = self.admin()
        try:
            conn.call("ACL", "SETUSER", user, rule_prefix + password)
        except RedisReplyError as exc:
            if exc.code == "NOPERM":
                raise permission_error(conn, exc, "ACL SETUSER", "+acl")
            # Redis quotes the rule it refused, password included: never let it out.
            return RedisReplyError(exc.text.replace(password, "********"))
        return RedisReplyError("")

    def apply(self, login: Login) -> None:
        conn = self.admin()
        try:
            found = conn.call("ACL", "GETUSER", login.user)
        except RedisReplyError as exc:
            raise permission_error(conn, exc, "ACL GETUSER", "+acl") if exc.code == "NOPERM" else exc
        if found is None:
            raise RunbookError("ACL user %s does not exist on Redis at %s" % (login.user, conn.where))
        error = self._setuser(login.user, ">", login.password)
        if error.text:
            raise RunbookError("adding the new password of %s on Redis at %s failed: %s"
                               % (login.user, conn.where, error.text.split(":", 1)[0]))
        self.persist()

    def revoke(self, previous: Login, current: Login) -> bool:
        if previous.password == current.password:
            return False
        error = self._setuser(previous.user, "<", previous.password)
        if error.text and "does not exist" not in error.text and "no such" not in error.text.lower():
            raise RunbookError("removing the previous password of %s on Redis at %s failed: %s"
                               % (previous.user, self.admin().where, error.text.split(":", 1)[0]))
        self.persist(current)
        return True

    def persist(self, current: t.Optional[Login] = None) -> None:
        """``ACL SAVE``; a server without an ACL file gets ``CONFIG REWRITE`` instead, after its
        ``requirepass`` is pointed at ``current`` (the default user's only password once the previous
        one is removed)."""
        conn = self.admin()
        try:
            conn.call("ACL", "SAVE")
            return
        except RedisReplyError as exc:
            if NO_ACL_FILE not in exc.text:
                raise permission_error(conn, exc, "ACL SAVE", "+acl") if exc.code == "NOPERM" else RunbookError(
                    "ACL SAVE on Redis at %s failed: %s" % (conn.where, exc.text))
        if current is not None and current.user == DEFAULT_USER:
            self._point_requirepass(current.password)
        try:
            conn.call("CONFIG", "REWRITE")
        except RedisReplyError as exc:
            self.task.warn("Redis at %s has no ACL file and CONFIG REWRITE failed (%s): the password change lives in "
                           "memory only, and a restart of the server brings the previous password back"
                           % (conn.where, exc.text.split("\n", 1)[0]))

    def _point_requirepass(self, password: str) -> None:
        """``CONFIG SET requirepass`` to ``password`` when the server uses it (Redis redacts the value
        in SLOWLOG and MONITOR); it leaves ``password`` as the default user's only one."""
        conn = self.admin()
        try:
            configured = conn.config_get("requirepass")
            if configured and configured != password:
                conn.call("CONFIG", "SET", "requirepass", password)
        except RedisReplyError as exc:
            self.task.warn("requirepass of Redis at %s was not updated (%s): its configuration file may still name "
                           "the previous password" % (conn.where, exc.text.replace(password, "********")))


def run_redis_credential_rotate(task: Task[RedisRotateOptions]) -> Result:
    opts = task.options
    return rotate_credential(task, RedisService(task), opts.rotation, opts.user)
