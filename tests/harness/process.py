"""Start and stop service processes on loopback: free ports, pid files, readiness waits.

A service's processes run in their own session and are tracked by pid files in its work
directory, so the same code serves throwaway test services (stopped at the end of the run)
and the persistent lab (started by one command, stopped by another).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import typing as t
from pathlib import Path


class ServiceError(RuntimeError):
    """A service could not start; the message includes the tail of its log."""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedProcess:
    """One long-running process with a pid file ``<workdir>/<name>.pid`` and a log ``<name>.log``."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.pid_file = self.workdir / ("%s.pid" % name)
        self.log_file = self.workdir / ("%s.log" % name)

    def spawn(self, argv: t.Sequence[str], env: t.Optional[dict] = None, user: t.Optional[str] = None,
              cwd: t.Optional[Path] = None) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        kwargs: dict = {}
        if user is not None and os.geteuid() == 0:
            kwargs["user"] = user
        try:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=str(cwd) if cwd else None, start_new_session=True, **kwargs)
        finally:
            log.close()
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    @property
    def pid(self) -> t.Optional[int]:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie child of ours still answers kill(0); reap it if so.
        with contextlib.suppress(ChildProcessError):
            done = os.waitpid(pid, os.WNOHANG)[0]
            if done == pid:
                return False
        return True

    def wait_until(self, ready: t.Callable[[], bool], timeout: float = 30.0, what: str = "ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise ServiceError("%s exited before it was %s; log:\n%s" % (self.name, what, log_tail(self.log_file)))
            if ready():
                return
            time.sleep(0.1)
        raise ServiceError("%s was not %s within %ss; log:\n%s" % (self.name, what, timeout, log_tail(self.log_file)))

    def wait_port(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.wait_until(lambda: port_open(host, port), timeout, "listening on %s:%s" % (host, port))

    def send_signal(self, signum: int) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signum)

    def stop(self, timeout: float = 15.0, signum: int = signal.SIGTERM) -> None:
        """Stop the process group; SIGKILL after ``timeout``. Safe to call when not running."""
        if not self.running():
            self.pid_file.unlink(missing_ok=True)
            return
        self.send_signal(signum)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running():
            self.send_signal(signal.SIGKILL)
            while self.running():
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """Fault injection: SIGKILL with no chance to clean up."""
        self.stop(timeout=0, signum=signal.SIGKILL)


def wait_for(predicate: t.Callable[[], t.Any], timeout: float = 30.0, what: str = "condition") -> t.Any:
    """Poll ``predicate`` until it returns something true (returned); AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.2)
