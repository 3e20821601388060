# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every PostgreSQL module connects: the connection options (:func:`postgres_connection_argspec`,
:class:`PgConnectionOptions`), where to connect (:class:`PgEndpoint`), psycopg connections with
errors explained (:class:`PgConnection`), and the libpq password file the client programs read
(:class:`PassFile`).

Names are data, never connection settings. libpq reads a ``dbname`` that holds ``=`` or starts
with ``postgresql://`` as a whole connection string, so the client programs get their settings
only as one quoted connection string (``_names.conninfo``), in which every value is literal;
psycopg does the same quoting for its keyword arguments.

Passwords never reach argv or the environment: the client programs read a libpq password file
with one line scoped to the real host, port, database and user (never ``*``). On Linux that file
is an anonymous memory file (``memfd_create``) that the child opens as ``/proc/<our pid>/fd/<n>``;
it exists only while this process lives, so nothing is left on disk even after SIGKILL. Elsewhere
it is a 0600 file in a private directory that is removed on every exit path and, after a kill, by
the next run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, Task, options_from
from ansible_collections.runbook.ops.plugins.module_utils._env import env_default
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import kubernetes_tunnel_argspec, task_tunnel
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    check_params, conninfo, host_name, int_in, no_control, passfile_field, pg_name, shown)

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

SSL_MODES = ("allow", "disable", "prefer", "require", "verify-ca", "verify-full")
# Where the password file lives when memfd is not available: one private directory per user.
PASSFILE_ROOT_PREFIX = "runbook-pg-pass-"

Settings = t.Dict[str, t.Union[str, int]]
"""libpq keywords and their values."""


def postgres_connection_argspec() -> t.Dict[str, t.Any]:
    """Connection options, named as in community.postgresql so one module_defaults block serves both.
    Each falls back to the libpq variable of the same meaning (what an AWX credential injects)."""
    return dict(
        login_host=dict(type="str", default="", aliases=["host"], fallback=env_default("PGHOST")),
        login_port=dict(type="int", default=5432, aliases=["port"], fallback=env_default("PGPORT")),
        login_user=dict(type="str", default="postgres", aliases=["login"], fallback=env_default("PGUSER")),
        login_password=dict(type="str", default="", no_log=True, fallback=env_default("PGPASSWORD")),
        login_unix_socket=dict(type="str", default="", aliases=["unix_socket"]),
        ssl_mode=dict(type="str", default="prefer", choices=list(SSL_MODES), fallback=env_default("PGSSLMODE")),
        ca_cert=dict(type="str", aliases=["ssl_rootcert"], fallback=env_default("PGSSLROOTCERT")),
        ssl_cert=dict(type="str", fallback=env_default("PGSSLCERT")),
        ssl_key=dict(type="str", no_log=False, fallback=env_default("PGSSLKEY")),
        connect_timeout=dict(type="int", default=10),
        **kubernetes_tunnel_argspec(),
    )


# --------------------------------------------------------------------------- option checks

def login_host(what: str, value: t.Any) -> str:
    """One host name or IP address (a directory means a Unix socket, as in libpq)."""
    text = no_control(what, value)
    if text.startswith("/"):
        return unix_socket_dir(what, text)
    return host_name(what, text)


def unix_socket_dir(what: str, value: t.Any) -> str:
    """The directory of a server's Unix socket: an absolute path, one server."""
    text = no_control(what, value)
    if not text.startswith("/"):
        raise RunbookError("%s %s is not an absolute directory path (the directory holding the server's "
                           ".s.PGSQL.<port> socket)" % (what, shown(text)))
    if "," in text:
        raise RunbookError("%s %s names more than one socket directory; give one server" % (what, shown(text)))
    return text


def password_text(what: str, value: t.Any) -> str:
    """A password: any text a password file line can hold. The message never shows it."""
    if not isinstance(value, str):
        raise RunbookError("%s is not a string" % what)
    if any(char in value for char in "\x00\r\n"):
        raise RunbookError("%s holds a NUL, carriage return or newline character, which a libpq password "
                           "file (and the server's protocol) cannot carry" % what)
    return value


def connection_rules() -> t.Dict[str, t.Callable[[str, t.Any], t.Any]]:
    """Validators of the connection options (see ``_names.check_params``)."""
    return dict(login_user=pg_name, login_host=login_host, login_unix_socket=unix_socket_dir,
                login_password=password_text, ca_cert=no_control, ssl_cert=no_control, ssl_key=no_control)


@dataclasses.dataclass(frozen=True)
class PgConnectionOptions:
    """The options of :func:`postgres_connection_argspec`, checked (names, ranges) before anything connects."""

    login_host: str
    login_port: int
    login_user: str
    login_password: str = dataclasses.field(repr=False)
    login_unix_socket: str
    ssl_mode: str
    ca_cert: t.Optional[str]
    connect_timeout: int
    ssl_cert: t.Optional[str] = None
    ssl_key: t.Optional[str] = None

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "PgConnectionOptions":
        check_params(params, connection_rules())
        if params.get("ssl_key") and not params.get("ssl_cert"):
            raise RunbookError("ssl_key is set without ssl_cert: give the client certificate its key belongs to")
        int_in("login_port", params["login_port"], 1, 65535)
        int_in("connect_timeout", params["connect_timeout"], 1, 86400, "0 would wait forever")
        return options_from(cls, params)


# --------------------------------------------------------------------------- where to connect

class PgEndpoint(t.NamedTuple):
    """The server address libpq connects to: a host name, an IP address or a Unix socket
    directory (empty: libpq's default socket directory), and a port. Through a tunnel, ``hostaddr``
    is the local end libpq connects to while ``host`` stays the name TLS verifies (and the password
    file matches), and ``via`` names the tunnel."""

    host: str
    port: int
    hostaddr: str = ""
    via: str = ""

    @property
    def is_socket(self) -> bool:
        return not self.hostaddr and (not self.host or self.host.startswith("/"))

    def describe(self) -> str:
        if self.is_socket:
            return "%s (unix socket %s)" % (self.port, self.host or "default directory")
        if self.via:
            return "%s through %s" % (self.host, self.via)
        return "%s:%d" % (self.host, self.port)


def open_endpoint(task: "Task[t.Any]", options: PgConnectionOptions) -> PgEndpoint:
    """Where this task reaches the server: through its ``kubernetes_tunnel`` when one is set
    (opened once, closed by the runner), else directly."""
    end = task_tunnel(task)
    if end is None:
        return direct_endpoint(options)
    if options.login_unix_socket:
        raise RunbookError("login_unix_socket and kubernetes_tunnel exclude each other: a tunnel ends at a TCP port")
    return PgEndpoint(host=options.login_host or end.host, port=end.port,
                      hostaddr=end.host if options.login_host else "", via=end.name)


def direct_endpoint(options: PgConnectionOptions) -> PgEndpoint:
    """The server the options name: the Unix socket directory when one is given, else the host.

    This is the one place where the address is decided; a caller that reaches the server another
    way (a local port forwarded to it) builds its own :class:`PgEndpoint` and hands it to
    :class:`PgConnection` instead.
    """
    return PgEndpoint(host=options.login_unix_socket or options.login_host, port=options.login_port)


# --------------------------------------------------------------------------- connections

def last_line(text: str) -> str:
    """The useful end of a libpq error (its last two non-empty lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[-2:]) if lines else text


def import_psycopg() -> t.Any:
    try:
        import psycopg
    except ImportError:
        raise RunbookError("the psycopg (version 3) Python package is required (pip install 'psycopg[binary]')")
    return psycopg


class PgConnection:
    """Connection settings for one server: psycopg connections, and the connection string and
    password file lines of the client programs. ``application`` names the module in
    ``pg_stat_activity``; ``endpoint`` defaults to :func:`direct_endpoint`."""

    def __init__(self, options: PgConnectionOptions, application: str,
                 endpoint: t.Optional[PgEndpoint] = None) -> None:
        self.options = options
        self.endpoint = endpoint or direct_endpoint(options)
        self.application_name = "runbook.ops %s" % application
        self.ssl_key = libpq_key_file(options.ssl_key) if options.ssl_key else None

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def user(self) -> str:
        return self.options.login_user

    @property
    def password(self) -> str:
        return self.options.login_password

    @property
    def where(self) -> str:
        return self.endpoint.describe()

    def settings(self, dbname: str) -> Settings:
        """libpq keywords for ``dbname`` on this server, without the password."""
        args: Settings = dict(dbname=dbname, user=self.user, port=self.port, sslmode=self.options.ssl_mode,
                              connect_timeout=self.options.connect_timeout, application_name=self.application_name)
        if self.host:
            args["host"] = self.host
        if self.endpoint.hostaddr:
            args["hostaddr"] = self.endpoint.hostaddr
        if self.options.ca_cert:
            args["sslrootcert"] = self.options.ca_cert
        if self.options.ssl_cert:
            args["sslcert"] = self.options.ssl_cert
        if self.ssl_key:
            args["sslkey"] = self.ssl_key
        return args

    def kwargs(self, dbname: str) -> Settings:
        """psycopg keyword arguments; psycopg quotes every value, so ``dbname`` stays a literal name."""
        args = self.settings(dbname)
        if self.password:
            args["password"] = self.password
        return args

    def conninfo(self, dbname: str) -> str:
        """The ``--dbname`` value for the client programs: every setting quoted, so the name is literal."""
        return conninfo(self.settings(dbname))

    def connect(self, dbname: str, autocommit: bool = True) -> "psycopg.Connection[t.Any]":
        library = import_psycopg()
        try:
            connection: "psycopg.Connection[t.Any]" = library.connect(autocommit=autocommit, **self.kwargs(dbname))
        except library.Error as exc:
            raise RunbookError(self.explain(exc, dbname))
        return connection

    def explain(self, exc: BaseException, dbname: str) -> str:
        """What a failed connection to ``dbname`` means, for a user (never the password)."""
        text = str(exc).strip()
        if "does not exist" in text and "database" in text:
            return 'database "%s" does not exist on %s' % (dbname, self.where)
        return 'cannot connect to database "%s" on %s as %s: %s' % (dbname, self.where, self.user, last_line(text))

    def maintenance(self) -> "psycopg.Connection[t.Any]":
        """A connection to a database that is not the one being created, renamed or dropped."""
        try:
            return self.connect("postgres")
        except RunbookError as exc:
            if "does not exist" not in exc.msg:
                raise
            return self.connect("template1")


# --------------------------------------------------------------------------- the password file

def passfile_lines(conn: PgConnection, dbname: str) -> str:
    """The password file for one connection: host, port, database and user are the real ones.

    libpq matches the host field against the ``host`` it connects to; for a Unix socket that is
    the socket directory, except libpq's compiled-in default directory (and no host at all),
    which it matches as ``localhost``; a socket connection gets both lines.
    """
    hosts = [conn.host] if conn.host else []
    if conn.endpoint.is_socket:
        hosts.append("localhost")
    fields = (str(conn.port), dbname, conn.user, conn.password)
    return "".join(":".join(passfile_field(value) for value in (host,) + fields) + "\n" for host in hosts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PassFile:
    """A libpq password file that the client programs read as ``path``.

    With memfd (Linux): an anonymous 0600 memory file, reached by the children through
    ``/proc/<pid>/fd/<n>`` (each open starts at offset 0, so pg_dump's and pg_restore's parallel
    workers read it too). It has no name on any filesystem and disappears with this process,
    even on SIGKILL.

    Without it: a 0600 file in ``<tmp>/runbook-pg-pass-<uid>/<pid>-<random>/`` (0700), removed
    on close; a directory left by a killed run (its pid is gone) is removed by the next one.
    """

    def __init__(self, text: str, use_memfd: bool = True, root: t.Optional[str] = None) -> None:
        self.fd: t.Optional[int] = None
        self.directory: t.Optional[str] = None
        self.path = ""
        self.kind = ""
        if use_memfd and self._memfd(text):
            return
        self._file(text, root or os.path.join(tempfile.gettempdir(), "%s%d" % (PASSFILE_ROOT_PREFIX, os.geteuid())))

    def _memfd(self, text: str) -> bool:
        if not hasattr(os, "memfd_create"):
            return False
        try:
            fd = os.memfd_create("runbook-pgpass", getattr(os, "MFD_CLOEXEC", 1))
        except OSError:
            return False
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode("utf-8"))
            path = "/proc/%d/fd/%d" % (os.getpid(), fd)
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != 0o600:
                raise OSError("not a private regular file")
        except OSError:
            os.close(fd)
            return False
        self.fd, self.path, self.kind = fd, path, "memfd"
        return True

    def _file(self, text: str, root: str) -> None:
        try:
            try:
                os.mkdir(root, 0o700)
            except FileExistsError:
                pass
            info = os.lstat(root)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                raise RunbookError("%s is not a private directory of this user (0700, ours, not a link); "
                                   "remove it so the PostgreSQL password file can be kept there" % root)
            sweep_passfiles(root)
            self.directory = tempfile.mkdtemp(prefix="%d-" % os.getpid(), dir=root)
            self.path = os.path.join(self.directory, "pgpass")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            self.close()
            raise RunbookError("cannot write the PostgreSQL password file under %s: %s" % (root, exc.strerror or exc))
        self.kind = "file"

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


_KEY_COPIES: t.List[PassFile] = []


def libpq_key_file(path: str) -> str:
    """``path``, or a private copy of it when group or others may read it: libpq refuses such a key,
    and AWX writes the files of its credentials 0660. The copy is a :class:`PassFile` (0600, in
    memory on Linux) kept for the life of this process, so the client programs can open it too."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if not mode & 0o077:
            return path
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return path  # libpq names the file it cannot use
    copy = PassFile(text)
    _KEY_COPIES.append(copy)
    return copy.path


def sweep_passfiles(root: str) -> t.List[str]:
    """Remove the password-file directories under ``root`` whose process is gone (killed runs)."""
    removed = []
    for entry in os.listdir(root):
        head = entry.split("-", 1)[0]
        if head.isdigit() and not _pid_alive(int(head)):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            removed.append(entry)
    return removed
