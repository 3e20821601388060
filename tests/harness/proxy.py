"""A TCP proxy in front of a service, to make it unreachable mid-operation and bring it back
with its state intact (killing moto would lose every multipart upload along with the fault)."""

from __future__ import annotations

import contextlib
import socket
import threading
import typing as t

from tests.harness.process import free_port


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, cut_on: t.Optional[t.Pattern[bytes]] = None) -> None:
        self.target = (target_host, target_port)
        # Cut everything the moment a client sends bytes matching this (e.g. the first upload of a
        # given backup set), instead of at a time the test guesses.
        self.cut_on = cut_on
        self.host = "127.0.0.1"
        self.port = free_port()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._conns: t.List[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, self.port))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self.bytes_forwarded = 0

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client = self._listener.accept()[0]
            except socket.timeout:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._cut.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if self.cut_on is not None and self.cut_on.search(data):
                    self.cut()
                    break
                self.bytes_forwarded += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Reset every open connection and refuse new ones: the service is 'down'."""
        self._cut.set()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    # shutdown() wakes the forwarding thread blocked in recv(); close() alone would not.
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._listener.close()
        self._thread.join(2)
