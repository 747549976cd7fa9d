"""A lean reader of a GGUF file's metadata (its key/value header) and its tensors' sizes,
for memory estimates.

``gguf.GGUFReader`` parses every field into numpy views, one per element of every
array: on this project's 2-core test machine it took 6.5 s on the llama-3 vocabulary
(128k tokens, 280k merges) and 17 s on gemma-4's (262k tokens, 515k merges), far too
long for an admission decision. What the estimate needs is a dozen scalars and a few
short per-layer arrays, so this reader decodes scalars and short numeric arrays and
only steps over string arrays (reading each string's length, never its bytes). The
file is memory-mapped: only the header's pages are read, never the tensor data. The
value type codes and the magic are :mod:`~bodhi_trio._llama._gguf_types`' (the ``gguf``
package's, without importing it and numpy with it).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from bodhi_trio._llama._gguf_types import GGUF_MAGIC, GGUFValueType

__all__ = ["GGUFHeaderError", "GGUFValue", "read_gguf_metadata", "read_gguf_tensor_sizes"]

GGUFValue = int | float | bool | str | tuple[int | float | bool, ...]
"""A decoded metadata value: a scalar, a string or a short numeric array."""

_VT = GGUFValueType
_SCALAR_FORMATS: dict[int, str] = {
    _VT.UINT8: "B",
    _VT.INT8: "b",
    _VT.UINT16: "H",
    _VT.INT16: "h",
    _VT.UINT32: "I",
    _VT.INT32: "i",
    _VT.FLOAT32: "f",
    _VT.BOOL: "?",
    _VT.UINT64: "Q",
    _VT.INT64: "q",
    _VT.FLOAT64: "d",
}
# Per-layer arrays (head counts, SWA patterns) have one entry per block; anything longer
# (token scores, token types) is of no use to an estimate and is stepped over.
_MAX_ARRAY = 4096
# A string longer than this in the header is a broken file, not a chat template.
_MAX_STRING = 64 * 1024 * 1024
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Bounds on what a header may make this reader keep or walk: real models have tens of
# metadata keys, a few thousand tensors and a chat template of kilobytes.
_MAX_KEYS = 65_536
_MAX_TENSORS = 65_536
_MAX_KEPT_STRING = 1024 * 1024  # longer strings are stepped over, not decoded
_MAX_KEPT_BYTES = 32 * 1024 * 1024  # strings and numbers kept, all keys together
_DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT


class GGUFHeaderError(ValueError):
    """The file is not a GGUF file this reader understands, or its header is cut short."""


class _Cursor:
    """Reads little- or big-endian values from a mapped file, checking every bound."""

    def __init__(self, data: mmap.mmap, order: str, path: Path) -> None:
        self.data = data
        self.order = order
        self.path = path
        self.offset = 0

    def _need(self, size: int) -> None:
        if self.offset + size > len(self.data):
            raise GGUFHeaderError(f"{self.path}: GGUF header cut short at byte {self.offset}")

    def scalar(self, fmt: str) -> int | float | bool:
        layout = struct.Struct(self.order + fmt)
        self._need(layout.size)
        (value,) = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        return value  # type: ignore[no-any-return]

    def count(self) -> int:
        return int(self.scalar("Q"))

    def string(self) -> str:
        length = self.count()
        if length > _MAX_STRING:
            raise GGUFHeaderError(f"{self.path}: GGUF string of {length} bytes in the header")
        self._need(length)
        raw = self.data[self.offset : self.offset + length]
        self.offset += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        # The hot loop for vocabularies: one unpack per string, no decoding.
        length = struct.Struct(self.order + "Q")
        data, offset, end = self.data, self.offset, len(self.data)
        for _ in range(count):
            if offset + 8 > end:
                break
            offset += 8 + length.unpack_from(data, offset)[0]
        else:
            if offset <= end:
                self.offset = offset
                return
        raise GGUFHeaderError(f"{self.path}: GGUF header cut short in a string array")

    def value(self, value_type: int) -> GGUFValue | None:
        """Decode one value; ``None`` for an array or a string this reader steps over."""
        if value_type == _VT.STRING:
            self._need(8)
            length = struct.unpack_from(self.order + "Q", self.data, self.offset)[0]
            if length > _MAX_KEPT_STRING:  # no template is this long: step over it
                self._need(8 + length)
                self.offset += 8 + length
                return None
            return self.string()
        if value_type in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[value_type])
        if value_type != _VT.ARRAY:
            raise GGUFHeaderError(f"{self.path}: unknown GGUF value type {value_type}")
        item_type = int(self.scalar("I"))
        count = self.count()
        if item_type == _VT.STRING:
            self.skip_strings(count)
            return None
        if item_type not in _SCALAR_FORMATS:
            raise GGUFHeaderError(f"{self.path}: unsupported GGUF array of type {item_type}")
        fmt = _SCALAR_FORMATS[item_type]
        size = struct.calcsize(fmt) * count
        self._need(size)
        if count > _MAX_ARRAY:
            self.offset += size
            return None
        items = struct.unpack_from(f"{self.order}{count}{fmt}", self.data, self.offset)
        self.offset += size
        return tuple(items)


def read_gguf_metadata(path: Path) -> dict[str, GGUFValue]:
    """Read the metadata of a GGUF file (versions 2 and 3, either byte order).

    Blocking, but cheap: tens of milliseconds for a 262k-token vocabulary.

    Args:
        path: The GGUF file (symlinks followed). For a split model, its first part.

    Returns:
        Every key with a scalar, string or numeric-array value of at most 4096 items;
        string arrays (the vocabulary) and longer arrays are left out.

    Raises:
        OSError: The file cannot be opened.
        GGUFHeaderError: Not a GGUF file, an unsupported version, or a cut-short header.
    """
    return _read(path, tensors=False)[0]


def read_gguf_tensor_sizes(path: Path) -> dict[str, int]:
    """The bytes of each tensor stored in a GGUF file, by tensor name.

    A tensor's size is the distance from its data's offset to the next tensor's (or to
    the end of the file), so it includes the alignment padding after it (at most
    ``general.alignment``, 32 bytes by default): no table of the quantisation types'
    block sizes is needed. Blocking; reads the header and the tensor infos only.

    Args:
        path: One GGUF file; each part of a split model holds its own tensors.

    Raises:
        OSError: The file cannot be opened.
        GGUFHeaderError: Not a GGUF file, or its header or tensor infos are cut short.
    """
    return _read(path, tensors=True)[1]


def _read(path: Path, *, tensors: bool) -> tuple[dict[str, GGUFValue], dict[str, int]]:
    with path.open("rb") as file:
        try:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GGUFHeaderError(f"{path}: not a GGUF file (empty)") from None
    with data:
        if len(data) < 24 or struct.unpack_from("<I", data, 0)[0] != GGUF_MAGIC:
            raise GGUFHeaderError(f"{path}: not a GGUF file (no GGUF magic)")
        # A file written on a big-endian machine shows its version byte-swapped.
        order = "<" if struct.unpack_from("<I", data, 4)[0] & 0xFFFF else ">"
        cursor = _Cursor(data, order, path)
        cursor.offset = 4
        version = int(cursor.scalar("I"))
        if version not in (2, 3):
            raise GGUFHeaderError(f"{path}: GGUF version {version} is not supported")
        tensor_count = cursor.count()
        kv_count = cursor.count()
        if kv_count > _MAX_KEYS or tensor_count > _MAX_TENSORS:
            raise GGUFHeaderError(
                f"{path}: {kv_count} metadata keys and {tensor_count} tensors: more than a"
                f" model has (at most {_MAX_KEYS} and {_MAX_TENSORS} are read)"
            )
        metadata: dict[str, GGUFValue] = {}
        kept = 0
        for _ in range(kv_count):
            key = cursor.string()
            value = cursor.value(int(cursor.scalar("I")))
            if value is not None:
                metadata[key] = value
                kept += len(key) + _kept_bytes(value)
                if kept > _MAX_KEPT_BYTES:
                    raise GGUFHeaderError(f"{path}: more than 32 MiB of metadata to keep")
        if not tensors:
            return metadata, {}
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0:
            raise GGUFHeaderError(f"{path}: general.alignment is {alignment!r}")
        return metadata, _tensor_sizes(cursor, tensor_count, alignment)


def _kept_bytes(value: GGUFValue) -> int:
    """About what keeping ``value`` costs: a string's length, 8 bytes a number."""
    if isinstance(value, str):
        return len(value)
    return 8 * len(value) if isinstance(value, tuple) else 8


def _tensor_sizes(cursor: _Cursor, count: int, alignment: int) -> dict[str, int]:
    """Read ``count`` tensor infos at ``cursor``; each tensor's bytes, from the offsets."""
    offsets: dict[str, int] = {}
    for _ in range(count):
        name = cursor.string()
        n_dims = int(cursor.scalar("I"))
        if n_dims > _MAX_DIMS:
            raise GGUFHeaderError(f"{cursor.path}: tensor {name!r} has {n_dims} dimensions")
        cursor.offset += 8 * n_dims + 4  # the dimensions and the type: sizes come from offsets
        offsets[name] = int(cursor.scalar("Q"))
    data_start = -(-cursor.offset // alignment) * alignment
    data_bytes = len(cursor.data) - data_start
    ordered = sorted(offsets.items(), key=lambda item: item[1])
    ends = [offset for _, offset in ordered[1:]] + [data_bytes]
    sizes: dict[str, int] = {}
    for (name, offset), end in zip(ordered, ends, strict=True):
        if not 0 <= offset <= end <= data_bytes:
            raise GGUFHeaderError(f"{cursor.path}: tensor {name!r} lies outside the file")
        sizes[name] = end - offset
    return sizes
