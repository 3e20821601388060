# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CRC64 Jones, as Redis computes it over an RDB file (the last 8 bytes of the file hold it).

``crc64_simple`` is the byte-at-a-time reference; :class:`CRC64` is the streaming one fast enough
for snapshots of hundreds of MiB without a C extension.
"""

from __future__ import annotations

import typing as t

_CRC64_POLY = 0x95AC9329AC4BC9B5  # Jones polynomial, reflected (redis crc64.c)


def _crc64_table() -> t.List[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _attempt in range(8):
            crc = (crc >> 1) ^ _CRC64_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC64_TABLE = _crc64_table()


def crc64_simple(data: bytes, crc: int = 0) -> int:
    """Byte-at-a-time table CRC64 (reference implementation, ~8 MiB/s)."""
    table = CRC64_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class CRC64:
    """Streaming CRC64 Jones (as Redis computes it for RDB files). ``update`` then ``value``.

    Fast path without C: the data is cut into ``LANES`` interleaved lanes processed together, each
    step done by C-implemented whole-buffer operations (``bytes.translate`` for the table lookups,
    big-int XOR for combining), and the lane CRCs are merged with GF(2) shift matrices. Short inputs
    use the byte-at-a-time table.
    """

    def __init__(self, lanes: int = 8192, lane_len: int = 128) -> None:
        self.crc = 0
        self.lanes = lanes
        self.lane_len = lane_len
        self.block = lanes * lane_len
        self._pending = b""
        self._planes = _plane_tables()
        self._merge = _merge_tables(lanes, lane_len)

    def update(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + bytes(data)
            self._pending = b""
        view = memoryview(data)
        offset = 0
        while len(view) - offset >= self.block:
            self.crc = self._block(bytes(view[offset:offset + self.block]))
            offset += self.block
        rest = bytes(view[offset:])
        if len(rest) >= 4096:
            self._pending = rest
        else:
            self.crc = crc64_simple(rest, self.crc)

    @property
    def value(self) -> int:
        if self._pending:
            self.crc = crc64_simple(self._pending, self.crc)
            self._pending = b""
        return self.crc

    def _block(self, block: bytes) -> int:
        """CRC of ``block`` continuing from ``self.crc``, lanes interleaved by position."""
        lanes, lane_len = self.lanes, self.lane_len
        # The running CRC is folded in as the initial state of lane 0 (CRC with init c over data
        # equals CRC with init 0 over data whose first 8 bytes are XORed with c).
        first = bytearray(block[:8])
        for i in range(8):
            first[i] ^= (self.crc >> (8 * i)) & 0xFF
        block = bytes(first) + block[8:]
        tables = self._planes
        # Lane i is block[i*lane_len:(i+1)*lane_len]; column j holds byte j of every lane.
        planes = [0] * 8  # CRC state of every lane, byte k of the state in plane k (big ints)
        frombytes = int.from_bytes
        for j in range(lane_len):
            column = block[j::lane_len]
            index = (frombytes(column, "little") ^ planes[0]).to_bytes(lanes, "little")
            new = []
            for k in range(8):
                looked = frombytes(index.translate(tables[k]), "little")
                new.append(looked ^ planes[k + 1] if k < 7 else looked)
            planes = new
        # Merge: crc(A || B) = shift(crc(A), len(B)) ^ crc(B); pairwise, lengths double each level.
        states = [p.to_bytes(lanes, "little") for p in planes]
        count = lanes
        for level_tables in self._merge:
            half = count // 2
            left = [s[0:count:2] for s in states]
            right = [frombytes(s[1:count:2], "little") for s in states]
            shifted = [0] * 8
            for k in range(8):
                src = left[k]
                for out in range(8):
                    shifted[out] ^= frombytes(src.translate(level_tables[k][out]), "little")
            states = [(shifted[out] ^ right[out]).to_bytes(half, "little") for out in range(8)]
            count = half
        return int.from_bytes(bytes(s[0] for s in states), "little")


_PLANE_CACHE: t.List[bytes] = []
_MERGE_CACHE: t.Dict[t.Tuple[int, int], t.List[t.List[t.List[bytes]]]] = {}


def _plane_tables() -> t.List[bytes]:
    if not _PLANE_CACHE:
        for k in range(8):
            _PLANE_CACHE.append(bytes((CRC64_TABLE[i] >> (8 * k)) & 0xFF for i in range(256)))
    return _PLANE_CACHE


def _zeros_operator(nbytes: int) -> t.List[int]:
    """The GF(2) matrix (64 column vectors) mapping a CRC state to its state after ``nbytes`` zero bytes."""
    # One zero byte: state -> T[state & 0xff] ^ (state >> 8), linear in the state.
    one = [crc64_simple(b"\0", 1 << bit) for bit in range(64)]
    result = [1 << bit for bit in range(64)]  # identity
    power = one
    while nbytes:
        if nbytes & 1:
            result = [_apply(power, column) for column in result]
        nbytes >>= 1
        if nbytes:
            power = [_apply(power, column) for column in power]
    return result


def _apply(matrix: t.List[int], vector: int) -> int:
    out = 0
    bit = 0
    while vector:
        if vector & 1:
            out ^= matrix[bit]
        vector >>= 1
        bit += 1
    return out


def _merge_tables(lanes: int, lane_len: int) -> t.List[t.List[t.List[bytes]]]:
    """Per merge level, ``tables[k][out]`` maps byte k of a left CRC to byte ``out`` of it shifted
    past the right part (whose length doubles each level)."""
    key = (lanes, lane_len)
    if key not in _MERGE_CACHE:
        levels = []
        length = lane_len
        count = lanes
        while count > 1:
            matrix = _zeros_operator(length)
            per_byte = []
            for k in range(8):
                values = [_apply(matrix, b << (8 * k)) for b in range(256)]
                per_byte.append([bytes((v >> (8 * out)) & 0xFF for v in values) for out in range(8)])
            levels.append(per_byte)
            length *= 2
            count //= 2
        _MERGE_CACHE[key] = levels
    return _MERGE_CACHE[key]
