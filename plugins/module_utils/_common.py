# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every runbook.ops module shares: the task contract (:class:`Task`, :func:`run_task`), the one
failure type (:class:`RunbookError`), and parsing of durations and timestamps.

A module's ``main()`` is always the same three lines::

    def main() -> None:
        module = RunbookModule(**module_args())
        run_task(module, HealthOptions.from_params, run_health)

``HealthOptions.from_params`` turns the validated parameters into a typed options object (defaults
live only in the argument spec); ``run_health(task)`` does the work and returns the result. The
runner alone decides what leaves the module: it adds ``diff`` only when the user asked for it,
adds ``duration_s``, emits warnings, closes the clients the task opened and turns every error into
``fail_json``, keeping the partial result a :class:`RunbookError` carries.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import socket
import ssl
import time
import traceback
import typing as t
import warnings

from ansible.module_utils.basic import AnsibleModule

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


Result = t.Dict[str, t.Any]
"""What a module returns: ``changed``, ``msg``, ``duration_s`` and its own fields (docs/results.md)."""


class RunbookError(Exception):
    """An expected failure: its message is shown to the user as is; ``details`` is the partial
    result (what was done or found before the failure), returned beside ``failed: true``."""

    def __init__(self, msg: str, /, **details: t.Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    @classmethod
    def keeping(cls, msg: str, result: t.Mapping[str, t.Any]) -> "RunbookError":
        """Fail with ``msg`` and keep ``result`` (its own ``msg``, the success summary, gives way)."""
        return cls(msg, **{key: value for key, value in result.items() if key != "msg"})


def parse_duration(value: t.Union[str, int, float, None], option: str = "duration") -> t.Optional[float]:
    """``30d``, ``6h``, ``1h30m``, ``90s``, ``500ms`` or a number of seconds, to seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(text):
        if text[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise RunbookError("%s: %r is not a duration (use e.g. 90s, 5m, 6h, 30d, 1h30m)" % (option, value))
    return total


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def parse_time(value: t.Union[str, datetime.datetime, None], option: str = "now") -> datetime.datetime:
    """An ISO 8601 timestamp (``Z`` accepted; naive means UTC), or the current time when empty."""
    if value is None or value == "":
        return utcnow()
    if isinstance(value, datetime.datetime):
        parsed = value
    else:
        text = str(value).strip()
        if text.endswith("Z") or text.endswith("z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise RunbookError("%s: %r is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)" % (option, value))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def isoformat(moment: datetime.datetime) -> str:
    """UTC, second precision, ``Z`` suffix: how every timestamp in our results reads."""
    return moment.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# OpenSSL's words for "the reply was not a TLS record": the peer answered in plain text.
_PLAINTEXT_REPLY_REASONS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
                            "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNEXPECTED_EOF_WHILE_READING")


def explain_tls_failure(exc: BaseException, where: str) -> t.Optional[str]:
    """What a failed TLS handshake with ``where`` most likely means, for a user; None when ``exc``
    is not a handshake failure. A TLS client on a plain-text port sees either a reply that is not a
    TLS record (OpenSSL: ``WRONG_VERSION_NUMBER``) or, from servers that wait for a full line
    (Redis), nothing until the timeout."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate of %s failed verification: %s" % (where, exc.verify_message or exc.reason)
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        if any(word in reason.upper() for word in _PLAINTEXT_REPLY_REASONS) or isinstance(exc, ssl.SSLEOFError):
            return ("%s does not speak TLS on this port (its reply is not a TLS handshake: %s); "
                    "use the TLS port or turn TLS off" % (where, reason))
        return "TLS handshake with %s failed: %s" % (where, reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ("no TLS handshake reply from %s before the timeout: the server probably does not speak TLS "
                "on this port (a plain-text port waits for a command); use the TLS port or turn TLS off" % where)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return ("%s closed the connection during the TLS handshake: it may not speak TLS on this port, "
                "or it wants a client certificate" % where)
    return None


def tls_handshake(sock: socket.socket, context: ssl.SSLContext, server_hostname: t.Optional[str],
                  where: str) -> ssl.SSLSocket:
    """``context.wrap_socket`` with every handshake failure turned into a :class:`RunbookError`
    that says what it means (see :func:`explain_tls_failure`)."""
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        explained = explain_tls_failure(exc, where)
        if explained is None:
            raise
        raise RunbookError(explained)


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)


class RunbookModule(AnsibleModule):
    """``AnsibleModule`` that also masks secrets nested in options that are not ``no_log`` as a whole
    (an inline kubeconfig's token and keys), from the first output on: the argument-spec failure,
    ``invocation.module_args`` at -vvv, results, warnings and messages.

    ``sensitive`` holds functions ``params -> [secret strings]``; they run on the raw parameters,
    before validation, so even a refused task prints none of them.
    """

    def __init__(self, *args: t.Any, sensitive: t.Sequence[t.Callable[[t.Mapping[str, t.Any]], t.List[str]]] = (),
                 **kwargs: t.Any) -> None:
        self._sensitive = tuple(sensitive)
        super().__init__(*args, **kwargs)

    def _load_params(self) -> None:
        super()._load_params()
        for extract in self._sensitive:
            try:
                self.no_log_values.update(value for value in extract(self.params) if value)
            except Exception:  # pylint: disable=broad-except
                # A malformed value is refused by validation later; masking must never be the failure.
                pass


class Closeable(t.Protocol):
    def close(self) -> None: ...


OptionsT = t.TypeVar("OptionsT")
ClientT = t.TypeVar("ClientT", bound=Closeable)
Opener = t.Callable[[t.Mapping[str, t.Any]], ClientT]


class Task(t.Generic[OptionsT]):
    """What a module hands its helper: typed ``options``, ``check_mode``, ``diff``, ``warn`` and the
    clients it opens through :meth:`client` (closed by the runner on every exit path).

    ``params`` are the validated module parameters; only client openers read them (a Kubernetes
    client is built from the same auth options as kubernetes.core), helpers read ``options``.
    """

    def __init__(self, options: OptionsT, params: t.Optional[t.Mapping[str, t.Any]] = None,
                 check_mode: bool = False, diff: bool = False) -> None:
        self.options = options
        self.params: t.Mapping[str, t.Any] = params or {}
        self.check_mode = check_mode
        self.diff = diff
        self.warnings: t.List[str] = []
        self._clients: t.Dict[t.Any, Closeable] = {}
        self.broken: t.List[str] = []
        self._provided: t.Dict[t.Any, Closeable] = {}

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def client(self, opener: "Opener[ClientT]") -> ClientT:
        """The client ``opener(params)`` returns, opened once per task and closed by the runner."""
        if opener in self._provided:
            return t.cast(ClientT, self._provided[opener])
        if opener not in self._clients:
            self._clients[opener] = opener(self.params)
        return t.cast(ClientT, self._clients[opener])

    def adopt(self, client: ClientT) -> ClientT:
        """Close ``client`` with the task's other clients (one the helper opened itself)."""
        self._clients[("adopted", id(client))] = client
        return client

    def verify_clients(self) -> None:
        """Raise what a client recorded as broken (a tunnel whose connection failed mid-stream);
        call it before committing what was read through the task's clients."""
        for opened in list(self._clients.values()):
            check = getattr(opened, "check", None)
            if callable(check):
                check()

    def provide(self, opener: "Opener[ClientT]", client: ClientT) -> None:
        """Use ``client`` wherever :meth:`client` is asked for ``opener`` (the caller keeps ownership:
        the task does not close it). For tests and for a caller that already holds a client."""
        self._provided[opener] = client

    def close(self) -> None:
        """Close every client the task opened, newest first; a failing close never hides the result."""
        clients, self._clients = list(self._clients.values()), {}
        for opened in reversed(clients):
            # A client that broke under the task (a tunnel) says so; the failure message names it.
            failure = getattr(opened, "failure", None)
            text = failure() if callable(failure) else None
            if isinstance(text, str) and text and text not in self.broken:
                self.broken.append(text)
            try:
                opened.close()
            except Exception as exc:  # pylint: disable=broad-except
                self.warn("closing %s failed: %s" % (type(opened).__name__, exc))

    def __enter__(self) -> "Task[OptionsT]":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _finished(result: Result, diff: bool, stopwatch: Stopwatch) -> Result:
    result.setdefault("changed", False)
    result.setdefault("duration_s", stopwatch.elapsed)
    if not diff:
        result.pop("diff", None)
    return result


def run_task(module: AnsibleModule, options: t.Callable[[t.Mapping[str, t.Any]], OptionsT],
             action: t.Callable[[Task[OptionsT]], Result]) -> None:
    """Build the options, run ``action(task)``, close its clients and exit; the one place where a
    result leaves a module.

    :class:`RunbookError` carries a message written for the user and the partial result. Anything
    else is a bug or a library error we did not anticipate: still a clean ``fail_json`` naming the
    exception type, with the traceback in ``exception`` (shown at -vvv) rather than a crash.
    """
    stopwatch = Stopwatch()
    # Library deprecation chatter (boto3's Python support notices) is not ours to show users.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    diff = bool(getattr(module, "_diff", False))
    task: t.Optional[Task[OptionsT]] = None
    try:
        task = Task(options(module.params), module.params, check_mode=module.check_mode, diff=diff)
        with task:
            result = action(task)
    except RunbookError as exc:
        _emit_warnings(module, task)
        details = dict(exc.details)
        details.pop("msg", None)
        module.fail_json(msg=_blame(task, exc.msg), **_finished(details, diff, stopwatch))
    except Exception as exc:  # pylint: disable=broad-except
        _emit_warnings(module, task)
        module.fail_json(msg=_blame(task, "unexpected %s: %s" % (type(exc).__name__, exc)),
                         exception=traceback.format_exc(), duration_s=stopwatch.elapsed)
    else:
        _emit_warnings(module, task)
        module.exit_json(**_finished(result, diff, stopwatch))


def _blame(task: t.Optional[Task[t.Any]], msg: str) -> str:
    """A failure after a client broke is most likely that break: name it first."""
    broken = [text for text in (task.broken if task is not None else []) if text not in msg]
    return "; ".join(broken + [msg])


def _emit_warnings(module: AnsibleModule, task: t.Optional[Task[t.Any]]) -> None:
    for message in task.warnings if task is not None else ():
        module.warn(message)


def options_from(cls: t.Type[OptionsT], params: t.Mapping[str, t.Any], **converted: t.Any) -> OptionsT:
    """``cls`` (a dataclass) from the validated parameters of the same names; ``converted`` holds
    the fields the caller parsed itself (durations, nested options). Defaults are the argument
    spec's: a parameter the spec does not define is a programming error, not a silent default."""
    values = {}
    for field in dataclasses.fields(t.cast(t.Any, cls)):
        if not field.init:
            continue
        if field.name in converted:
            values[field.name] = converted[field.name]
        elif field.name in params:
            values[field.name] = params[field.name]
    return cls(**values)
