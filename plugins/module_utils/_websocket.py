# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client side of the WebSocket protocol (RFC 6455) as far as the Kubernetes tunnel needs it:
the upgrade request and the check of its answer, masked client frames, and an incremental decoder
of what a server sends. No extensions (no compression) are offered, so none are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import os
import typing as t

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 64 * 1024 * 1024
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ProtocolError(Exception):
    """The peer broke the WebSocket (or the port-forward channel) framing."""


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (one big-integer operation, not a Python loop)."""
    size = len(data)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def encode_frame(opcode: int, payload: bytes, mask: t.Optional[bytes] = None) -> bytes:
    """One final frame; clients must mask (``mask`` is 4 random bytes), servers must not."""
    head = bytearray([0x80 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head.append(bit | size)
    elif size < 65536:
        head.append(bit | 126)
        head += size.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += size.to_bytes(8, "big")
    if mask:
        head += mask
        payload = apply_mask(payload, mask)
    return bytes(head) + payload


def client_frame(opcode: int, payload: bytes) -> bytes:
    return encode_frame(opcode, payload, os.urandom(4))


class FrameDecoder:
    """Turns the bytes a WebSocket server sends into ``(opcode, payload)`` messages.

    Fragmented data messages are joined; control frames (close, ping, pong) come out as they arrive.
    Masked frames, reserved bits and oversized messages are protocol errors.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._parts: t.List[bytes] = []
        self._size = 0
        self._opcode: t.Optional[int] = None
        self._max = max_message

    def feed(self, data: bytes) -> t.List[t.Tuple[int, bytes]]:
        self._buf += data
        out: t.List[t.Tuple[int, bytes]] = []
        try:
            while True:
                frame = self._next_frame()
                if frame is None:
                    return out
                self._take(frame, out)
        finally:
            del self._buf[:self._pos]  # one move per feed, not one per frame
            self._pos = 0

    def _take(self, frame: t.Tuple[bool, int, bytes], out: t.List[t.Tuple[int, bytes]]) -> None:
        fin, opcode, payload = frame
        if opcode >= 0x8:
            if not fin or len(payload) > 125:
                raise ProtocolError("a fragmented or oversized control frame")
            out.append((opcode, payload))
            return
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise ProtocolError("a continuation frame without a message to continue")
        elif self._opcode is not None:
            raise ProtocolError("a new message inside a fragmented one")
        else:
            self._opcode = opcode
        self._parts.append(payload)
        self._size += len(payload)
        if self._size > self._max:
            raise ProtocolError("a message over %d bytes" % self._max)
        if fin:
            out.append((self._opcode, self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)))
            self._opcode, self._parts, self._size = None, [], 0

    def _next_frame(self) -> t.Optional[t.Tuple[bool, int, bytes]]:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            return None
        first, second = buf[pos], buf[pos + 1]
        if first & 0x70:
            raise ProtocolError("reserved bits set (no extension was negotiated)")
        if second & 0x80:
            raise ProtocolError("the server masked a frame")
        size, offset = second & 0x7F, pos + 2
        if size == 126:
            if len(buf) - pos < 4:
                return None
            size, offset = int.from_bytes(buf[pos + 2:pos + 4], "big"), pos + 4
        elif size == 127:
            if len(buf) - pos < 10:
                return None
            size, offset = int.from_bytes(buf[pos + 2:pos + 10], "big"), pos + 10
        if size > self._max:
            raise ProtocolError("a frame of %d bytes" % size)
        if len(buf) < offset + size:
            return None
        self._pos = offset + size
        return bool(first & 0x80), first & 0x0F, bytes(buf[offset:offset + size])


def handshake_request(path: str, host_header: str, key: str, token: t.Optional[str], user_agent: str,
                      subprotocol: str) -> bytes:
    lines = [
        "GET %s HTTP/1.1" % path,
        "Host: %s" % host_header,
        "User-Agent: %s" % user_agent,
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: %s" % key,
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: %s" % subprotocol,
    ]
    if token:
        lines.append("Authorization: Bearer %s" % token)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _GUID).encode("ascii")).digest()).decode("ascii")  # nosec: RFC 6455


def parse_response_head(head: bytes) -> t.Tuple[int, t.Dict[str, str]]:
    """Status code and lower-cased headers of an HTTP/1.1 response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProtocolError("not an HTTP response: %r" % lines[0][:80])
    headers: t.Dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")
