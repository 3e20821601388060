# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How we talk to Redis: the connection options every Redis module accepts and a small RESP2 client.

- :func:`redis_connection_argspec` and :data:`REDIS_CONNECTION_REQUIRED_BY`: the ``login_*``, TLS and
  timeout options (names as in community.general's Redis modules), for any module's ``module_args()``.
- :class:`RedisConnectionOptions`: those options checked and typed; :meth:`RedisConnectionOptions.address`
  is the one place that decides where a connection goes.
- :class:`RedisConnection`: one connection over TCP (optionally TLS) or a unix socket, with AUTH
  (password or ACL user) and pipelining. No third-party client is needed on the managed host.
- ``INFO`` parsing and the wording of missing ACL rights.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, Task, options_from, tls_handshake
from ansible_collections.runbook.ops.plugins.module_utils._env import env_default
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import kubernetes_tunnel_argspec, task_tunnel
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    check_params, host_name, local_path, no_control, number, optional, shown)
from ansible_collections.runbook.ops.plugins.module_utils._stream import CHUNK

Info = t.Dict[str, t.Any]
"""``INFO`` as a flat mapping; ``keyspace`` maps ``db<n>`` to ``{"keys": n, "expires": n, ...}``."""
Reply = t.Any
"""A RESP reply: str, bytes, int, None, a list of replies, or a :class:`RedisReplyError` (in a pipeline)."""


Arg = t.Union[str, bytes, bytearray, int]
"""One argument of a command."""


class RedisReplyError(RunbookError):
    """An error reply (``-ERR ...``, ``-NOPERM ...``) from the server."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.code = text.split(" ", 1)[0] if text else ""


class UnknownCommand(RedisReplyError):
    """The server does not know the command: disabled or renamed with ``rename-command``. ``text``
    names the command and the ``command_names`` option; ``server_text`` is what the server said."""

    def __init__(self, server_text: str, command: str, where: str, mapped: bool) -> None:
        if mapped:
            hint = "the name given in command_names.%s is not known to the server either" % command
        else:
            hint = ("if it was renamed with rename-command, set command_names: {%s: <its name on the server>}"
                    % command)
        super().__init__("%s is disabled or renamed on Redis at %s (%s); %s"
                         % (command, where, server_text.split(",", 1)[0], hint))
        self.server_text = server_text
        self.command = command


# --------------------------------------------------------------------------- options

def redis_connection_argspec() -> t.Dict[str, t.Any]:
    """The connection options (documented by the ``runbook.ops.redis`` doc fragment, ``validate_certs``
    by the module, as it also applies to S3); add :data:`REDIS_CONNECTION_REQUIRED_BY` to the rules."""
    # Environment defaults are what the collection's Redis credential type injects; certificate
    # verification has none, so no environment can turn it off.
    return dict(
        login_host=dict(type="str", default="localhost", fallback=env_default("REDIS_HOST")),
        login_port=dict(type="int", default=6379, fallback=env_default("REDIS_PORT")),
        login_user=dict(type="str", fallback=env_default("REDIS_USERNAME")),
        login_password=dict(type="str", no_log=True, fallback=env_default("REDIS_PASSWORD")),
        tls=dict(type="bool", default=False, fallback=env_default("REDIS_TLS")),
        validate_certs=dict(type="bool", default=True),
        ca_certs=dict(type="str", fallback=env_default("REDIS_TLS_CA_CERT")),
        client_cert_file=dict(type="str", fallback=env_default("REDIS_TLS_CERT")),
        client_key_file=dict(type="str", no_log=False, fallback=env_default("REDIS_TLS_KEY")),
        connect_timeout=dict(type="float", default=10.0),
        command_names=dict(type="dict", default={}),
        **kubernetes_tunnel_argspec(),
    )


REDIS_CONNECTION_REQUIRED_BY = {"client_key_file": ("client_cert_file",)}
_COMMAND = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_RENAMED = re.compile(r"^[!-~]+$")


def _command_names(what: str, value: t.Any) -> t.Dict[str, str]:
    """``{logical command: its name on the server}`` (``rename-command``), keys upper-cased."""
    if not isinstance(value, dict):
        raise RunbookError("%s must be a mapping such as {BGSAVE: HIPAA_BGSAVE_1234}" % what)
    names: t.Dict[str, str] = {}
    for logical, renamed in value.items():
        if not isinstance(logical, str) or not _COMMAND.match(logical):
            raise RunbookError("%s: %s is not a Redis command name" % (what, shown(logical)))
        if not isinstance(renamed, str) or not _RENAMED.match(renamed):
            raise RunbookError("%s.%s: %s is not a command name (printable ASCII, no spaces; a disabled command "
                               "cannot be given a name)" % (what, logical, shown(renamed)))
        names[logical.upper()] = renamed
    return names


def _plain_password(what: str, value: t.Any) -> str:
    # Any bytes may be a Redis password (AUTH sends it as a length-prefixed bulk string, so CR/LF in it
    # can never start another command); only a type check, and never the value in a message.
    if not isinstance(value, str):
        raise RunbookError("%s is not a string" % what)
    return value


_CONNECTION_RULES = {
    "login_host": host_name,
    "login_user": optional(no_control),
    "login_password": _plain_password,
    "ca_certs": optional(local_path),
    "client_cert_file": optional(local_path),
    "client_key_file": optional(local_path),
}


@dataclasses.dataclass(frozen=True)
class RedisConnectionOptions:
    """The options of :func:`redis_connection_argspec`, checked before anything is connected to."""

    login_host: str
    login_port: int
    login_user: t.Optional[str]
    login_password: t.Optional[str] = dataclasses.field(repr=False)
    tls: bool
    validate_certs: bool
    ca_certs: t.Optional[str]
    client_cert_file: t.Optional[str]
    client_key_file: t.Optional[str]
    connect_timeout: float
    command_names: t.Mapping[str, str]
    via: t.Optional[t.Tuple[str, int]] = None  # the local end of a kubernetes_tunnel (see reach())
    tunnel: str = ""

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "RedisConnectionOptions":
        check_params(params, _CONNECTION_RULES)
        if not params["login_host"]:
            raise RunbookError("login_host is empty")
        number("login_port", params["login_port"], 1, 65535)
        number("connect_timeout", params["connect_timeout"], 0, 86400, above=True)
        return options_from(cls, params, command_names=_command_names("command_names", params["command_names"]))

    @property
    def where(self) -> str:
        """The server as the user named it, for messages."""
        if self.tunnel:
            return "%s:%s through %s" % (self.login_host, self.login_port, self.tunnel)
        return "%s:%s" % (self.login_host, self.login_port)

    @property
    def acl_user(self) -> str:
        """The ACL user connections authenticate as (Redis calls the password-only one ``default``)."""
        return self.login_user if self.login_user else "default"

    def address(self) -> t.Tuple[str, int]:
        """Where connections go: the one place that decides it. A tunnel in front of the server (a
        local port forwarded to it) is chosen here; TLS still verifies :attr:`login_host`."""
        return self.via or (self.login_host, self.login_port)

    def connect(self, timeout: t.Optional[float] = None, authenticate: bool = True) -> "RedisConnection":
        """A new connection; ``authenticate=False`` only probes whether the server accepts connections."""
        return RedisConnection.open(self, timeout=timeout, authenticate=authenticate)


def reach(task: "Task[t.Any]", options: RedisConnectionOptions) -> RedisConnectionOptions:
    """``options`` as this task reaches the server: through its ``kubernetes_tunnel`` when one is
    set (opened once, closed by the runner), else directly."""
    end = task_tunnel(task)
    if end is None:
        return options
    return dataclasses.replace(options, via=(end.host, end.port), tunnel=end.name)


def tls_context(options: RedisConnectionOptions) -> ssl.SSLContext:
    """The client TLS context; an unreadable or malformed CA, certificate or key file is named."""
    try:
        context = ssl.create_default_context(cafile=options.ca_certs or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise RunbookError("ca_certs %s cannot be used as a CA bundle: %s (a PEM file of CA certificates is expected)"
                           % (shown(options.ca_certs), getattr(exc, "strerror", None) or exc))
    if not options.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.client_cert_file:
        try:
            # An encrypted key is refused (empty passphrase) rather than prompted for on a terminal.
            context.load_cert_chain(options.client_cert_file, options.client_key_file or None, password=lambda: b"")
        except (OSError, ssl.SSLError, ValueError) as exc:
            files = "client_cert_file %s" % shown(options.client_cert_file)
            if options.client_key_file:
                files += " with client_key_file %s" % shown(options.client_key_file)
            raise RunbookError("%s cannot be loaded: %s (PEM files of the certificate and of its unencrypted "
                               "private key are expected)" % (files, getattr(exc, "strerror", None) or exc))
    return context


# --------------------------------------------------------------------------- RESP client

class RedisConnection:
    """One connection over an open socket. ``call`` sends a command and returns its reply (error
    replies raise :class:`RedisReplyError`); ``pipeline`` sends many and returns every reply (errors
    as exception objects). Open one with :meth:`open` or :meth:`open_unix`."""

    def __init__(self, sock: socket.socket, where: str, user: t.Optional[str] = None,
                 connect_timeout: float = 10.0, command_names: t.Optional[t.Mapping[str, str]] = None) -> None:
        self.sock = sock
        self.where = where
        self.user = user
        self.connect_timeout = connect_timeout
        self.command_names: t.Mapping[str, str] = dict(command_names or {})
        self._buf = bytearray()
        self._pos = 0
        self._answered = False

    @classmethod
    def open(cls, options: RedisConnectionOptions, timeout: t.Optional[float] = None,
             authenticate: bool = True) -> "RedisConnection":
        timeout = options.connect_timeout if timeout is None else timeout
        where = options.where
        # The context first: a bad CA or client certificate file is named before any connection is made.
        context = tls_context(options) if options.tls else None
        try:
            raw = socket.create_connection(options.address(), timeout=timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, ValueError) as exc:
            # ValueError/UnicodeError: a host name the resolver or the IDNA codec refuses.
            raise RunbookError("cannot connect to Redis at %s: %s" % (where, getattr(exc, "strerror", None) or exc))
        if context is not None:
            # The socket still has connect_timeout: a plain-text port, which waits for a full command
            # line, fails the handshake within that time and is reported as not speaking TLS.
            raw = tls_handshake(raw, context, options.login_host, "Redis at %s" % where)
        conn = cls(raw, where, options.login_user, timeout, options.command_names)
        if authenticate and options.login_password:
            conn.authenticate(options.login_password)
        return conn

    @classmethod
    def open_unix(cls, path: str, timeout: float) -> "RedisConnection":
        """A connection to a local server's unix socket (no password: the socket is private)."""
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(timeout)
        try:
            raw.connect(path)
        except OSError as exc:
            raw.close()
            raise RunbookError("cannot connect to Redis at %s: %s" % (path, exc.strerror or exc))
        return cls(raw, path, connect_timeout=timeout)

    def authenticate(self, password: str) -> None:
        args = ["AUTH", self.user, password] if self.user else ["AUTH", password]
        try:
            self.call(*args)
        except RedisReplyError as exc:
            self.close()
            raise RunbookError("authentication to Redis at %s%s failed: %s"
                               % (self.where, " as user %r" % self.user if self.user else "", exc.text))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RedisConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- wire
    @staticmethod
    def encode(args: t.Sequence[Arg]) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            if isinstance(arg, (bytes, bytearray)):
                data = bytes(arg)
            else:
                data = str(arg).encode("utf-8")
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
        return b"".join(out)

    def send(self, payload: bytes) -> None:
        try:
            self.sock.sendall(payload)
        except OSError as exc:
            raise RunbookError("lost the connection to Redis at %s while sending: %s" % (self.where, exc))

    def _fill(self, what: str) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        try:
            chunk = self.sock.recv(CHUNK)
        except socket.timeout:
            raise RunbookError("Redis at %s did not answer in time (%s)%s" % (self.where, what, self._tls_hint()))
        except OSError as exc:
            raise RunbookError("lost the connection to Redis at %s (%s): %s%s" % (self.where, what, exc, self._tls_hint()))
        if not chunk:
            raise RunbookError("Redis at %s closed the connection (%s)%s" % (self.where, what, self._tls_hint()))
        self._answered = True
        self._buf += chunk

    def _tls_hint(self) -> str:
        # A TLS port drops a plain-text client without a word: say so when the very first reply never came.
        if self._answered or isinstance(self.sock, ssl.SSLSocket) or self.sock.family == socket.AF_UNIX:
            return ""
        return "; it never answered this connection: if the port speaks TLS, set tls: true"

    def read_line(self, what: str = "reply") -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos:end])
                self._pos = end + 2
                return line
            self._fill(what)

    def read_exact(self, size: int, what: str = "reply") -> bytes:
        while len(self._buf) - self._pos < size:
            self._fill(what)
        data = bytes(self._buf[self._pos:self._pos + size])
        self._pos += size
        return data

    def take_buffered(self, limit: int) -> bytes:
        """Bytes already received but not parsed (the start of a bulk transfer)."""
        data = bytes(self._buf[self._pos:self._pos + limit])
        self._pos += len(data)
        return data

    def read_reply(self) -> Reply:
        line = self.read_line()
        if not line:
            raise RunbookError("Redis at %s sent an empty line where a reply was expected" % self.where)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self.read_exact(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self.read_reply() for _index in range(count)]
        raise RunbookError("Redis at %s sent an unexpected reply %r" % (self.where, line[:40]))

    def renamed(self, args: t.Sequence[Arg]) -> t.List[Arg]:
        """``args`` with the command as the server names it (``command_names``)."""
        out = list(args)
        if out and isinstance(out[0], str):
            out[0] = self.command_names.get(out[0].upper(), out[0])
        return out

    def _checked(self, args: t.Sequence[Arg], reply: Reply) -> Reply:
        if isinstance(reply, RedisReplyError) and reply.text.startswith("ERR unknown command"):
            return UnknownCommand(reply.text, str(args[0]).upper() if args else "", self.where,
                                  bool(args) and str(args[0]).upper() in self.command_names)
        return reply

    def call(self, *args: Arg) -> Reply:
        self.send(self.encode(self.renamed(args)))
        reply = self._checked(args, self.read_reply())
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def pipeline(self, commands: t.Sequence[t.Sequence[Arg]]) -> t.List[Reply]:
        if not commands:
            return []
        self.send(b"".join(self.encode(self.renamed(c)) for c in commands))
        return [self._checked(c, self.read_reply()) for c in commands]

    # ---- helpers
    def info(self, section: str = "") -> Info:
        text = self.call("INFO", section) if section else self.call("INFO")
        return parse_info(text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text))

    def config_get(self, name: str) -> t.Optional[str]:
        reply = self.call("CONFIG", "GET", name)
        if isinstance(reply, list) and len(reply) >= 2:
            value = reply[1]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return None


# --------------------------------------------------------------------------- INFO and ACL wording

def parse_info(text: str) -> Info:
    """INFO output to a flat dict; ``keyspace`` is parsed to ``{"db0": {"keys": n, "expires": n}}``."""
    keyspace: t.Dict[str, t.Dict[str, int]] = {}
    info: Info = {"keyspace": keyspace}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        if re.match(r"^db\d+$", key):
            fields = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
            keyspace[key] = {k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()}
        else:
            info[key] = value
    return info


def info_int(info: Info, key: str, default: int = 0) -> int:
    """An integer INFO field; ``default`` when it is missing or not a number."""
    try:
        return int(info.get(key, default))
    except (TypeError, ValueError):
        return default


def db_number(db: str) -> int:
    """``db12`` -> 12 (the sort order of databases in results)."""
    return int(db[2:])


def keys_per_db(info: Info) -> t.Dict[str, int]:
    keyspace: t.Dict[str, t.Dict[str, int]] = info.get("keyspace", {})
    return {db: keyspace[db].get("keys", 0) for db in sorted(keyspace, key=db_number)}


def keyspace_differences(expected: t.Mapping[str, int], actual: t.Mapping[str, int], where: str) -> t.List[str]:
    """One message per database whose key count in ``where`` differs from ``expected``."""
    problems = []
    for db in sorted(set(expected) | set(actual), key=db_number):
        if expected.get(db, 0) != actual.get(db, 0):
            problems.append("%s: %s keys in %s, %s in the manifest" % (db, actual.get(db, 0), where, expected.get(db, 0)))
    return problems


def permission_error(conn: RedisConnection, exc: RedisReplyError, operation: str, needs: str) -> RunbookError:
    who = "user %r" % conn.user if conn.user else "the default user"
    return RunbookError("%s on Redis at %s is not allowed for %s: the ACL must grant %s (server said: %s)"
                        % (operation, conn.where, who, needs, exc.text))


def server_facts(conn: RedisConnection, needs: str = "+info") -> t.Dict[str, t.Any]:
    """What a snapshot records and a restore needs to know about a server, from one ``INFO``."""
    try:
        info = conn.info()
    except RedisReplyError as exc:
        if exc.code == "NOPERM":
            raise permission_error(conn, exc, "INFO", needs)
        raise RunbookError("INFO on Redis at %s failed: %s" % (conn.where, exc.text))
    keyspace: t.Dict[str, t.Dict[str, int]] = info["keyspace"]
    return {
        "version": info.get("redis_version"),
        "mode": info.get("redis_mode"),
        "role": info.get("role"),
        "used_memory": info_int(info, "used_memory"),
        "keys": keys_per_db(info),
        "expires": {db: fields.get("expires", 0) for db, fields in keyspace.items()},
        "config_file": info.get("config_file") or "",
        "aof_enabled": info_int(info, "aof_enabled"),
    }
