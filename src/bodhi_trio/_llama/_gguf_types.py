"""The few GGUF constants bodhi-trio reads at run time, without importing ``gguf``.

The ``gguf`` package imports numpy (and its BLAS) on import: 22 MiB of a server's resident
memory, over a quarter of an idle bodhi-trio, for a magic number and three small tables.
The tables are here; ``tests/llama/test_gguf_types.py`` checks every one against the
installed ``gguf``, so they cannot drift from it unnoticed. ``gguf`` itself is imported only
to write the demo model (:mod:`bodhi_trio._config._demo`).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["CACHE_TYPE_SIZES", "FILE_TYPES", "GGUF_MAGIC", "GGUFValueType"]

GGUF_MAGIC: Final = 0x46554747
"""The first four bytes of a GGUF file (``GGUF``), as a little-endian ``uint32``."""


class GGUFValueType(enum.IntEnum):
    """The type of a metadata value (``gguf.GGUFValueType``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


CACHE_TYPE_SIZES: Final[dict[str, tuple[int, int]]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
}
"""The KV cache types llama-server takes (``--cache-type-k``/``-v``, exactly these names; any
other fails its start): elements per block and bytes per block (``gguf.GGML_QUANT_SIZES``)."""

FILE_TYPES: Final[dict[int, str]] = {
    0: "ALL_F32",
    1: "MOSTLY_F16",
    2: "MOSTLY_Q4_0",
    3: "MOSTLY_Q4_1",
    7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1",
    10: "MOSTLY_Q2_K",
    11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M",
    13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S",
    15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M",
    18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS",
    20: "MOSTLY_IQ2_XS",
    21: "MOSTLY_Q2_K_S",
    22: "MOSTLY_IQ3_XS",
    23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S",
    25: "MOSTLY_IQ4_NL",
    26: "MOSTLY_IQ3_S",
    27: "MOSTLY_IQ3_M",
    28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M",
    30: "MOSTLY_IQ4_XS",
    31: "MOSTLY_IQ1_M",
    32: "MOSTLY_BF16",
    36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0",
    38: "MOSTLY_MXFP4_MOE",
    39: "MOSTLY_NVFP4",
    40: "MOSTLY_Q1_0",
    1024: "GUESSED",
}
"""``general.file_type``: the model's quantization (``gguf.LlamaFileType``)."""
