"""Deterministic, length-checked binary encoding shared by the wire messages and the saved states.

Every read is bounds-checked and raises `MalformedMessage`, never `IndexError` or `struct.error`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from secagg.errors import MalformedMessage

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Writer:
    """Appends big-endian integers and length-prefixed byte strings."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(_U8.pack(value))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(_U64.pack(value))
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def blob(self, data: bytes) -> Writer:
        """A u32 length then the bytes."""
        self._parts.append(_U32.pack(len(data)))
        self._parts.append(bytes(data))
        return self

    def ids(self, values: Iterable[int]) -> Writer:
        """A u16 count then u32 ids (participant sets)."""
        items = list(values)
        self.u16(len(items))
        for item in items:
            self.u32(item)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Consumes what `Writer` produced; every overrun is a `MalformedMessage` naming `what`."""

    def __init__(self, data: bytes | bytearray | memoryview, what: str) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0
        self._what = what

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._view):
            raise MalformedMessage(
                f"{self._what}: truncated (needed {n} bytes at offset {self._pos}, "
                f"{len(self._view) - self._pos} left)"
            )
        chunk = self._view[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return int(_U8.unpack(self._take(1))[0])

    def u16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def view(self, n: int) -> memoryview:
        """Zero-copy slice (for the large masked vector)."""
        return self._take(n)

    def blob(self, max_len: int | None = None) -> bytes:
        n = self.u32()
        if max_len is not None and n > max_len:
            raise MalformedMessage(f"{self._what}: field of {n} bytes exceeds {max_len}")
        return self.raw(n)

    def ids(self) -> list[int]:
        count = self.u16()
        return [self.u32() for _ in range(count)]

    @property
    def remaining(self) -> int:
        return len(self._view) - self._pos

    def end(self) -> None:
        if self.remaining:
            raise MalformedMessage(f"{self._what}: {self.remaining} unexpected trailing bytes")
