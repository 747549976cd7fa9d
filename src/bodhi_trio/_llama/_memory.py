"""How much memory a model takes: an estimate from its GGUF (the measured RSS of a running
child is :mod:`~bodhi_trio._llama._group_rss`'s).

The estimate (:func:`estimate_model_memory`) is the model file (weights are
memory-mapped; on the CPU every page is touched at warm-up, so all of it becomes
resident) plus the KV cache llama-server allocates for the context it will run with,
plus a fixed allowance for the rest of the process. How llama-server (the pinned
build, ``src/llama-context.cpp``, ``src/llama-kv-cache*.cpp``, ``tools/server/server.cpp``)
sizes the cache, and what this module follows:

* ``--ctx-size`` (``-c``) is the context; absent or ``0`` means the model's training
  context (``<arch>.context_length``): ``common_params.n_ctx`` defaults to 0. It is
  rounded up to a multiple of 256.
* ``--parallel`` (``-np``) absent means "auto": 4 slots sharing one *unified* KV
  cache of that context, so slots do not multiply it. An explicit ``--parallel N``
  without ``--kv-unified`` gives N streams of ``pad256(n_ctx / N)`` cells each, which
  can round the total up (``-c 1000 -np 3`` allocates 1536 cells).
* ``--kv-unified-per-slot M`` without ``-c`` sizes the cache to ``slots * M``.
* Each layer holds K and V rows of ``n_head_kv * head_dim`` elements per cell,
  ``head_dim`` being ``key_length``/``value_length`` or ``embedding_length /
  head_count``, in ``--cache-type-k``/``-v`` (``f16`` unless given).
* Sliding-window layers (Gemma 2/3/4, gpt-oss, Cohere 2...) keep only
  ``pad256(min(n_ctx, window * slots + n_ubatch))`` cells (per stream; ``slots`` 1
  when not unified) unless ``--swa-full``.
* Layers that reuse an earlier layer's cache (Gemma 3n, Gemma 4 ``shared_kv_layers``)
  and encoder-only architectures (BERT and the like) have none of their own.

With ``--rpc`` naming only workers on other machines, what they will hold (their
layers' weights and KV cache) is :attr:`MemoryEstimate.elsewhere_bytes`, and
:attr:`MemoryEstimate.here` what this machine's budget counts (:mod:`._offload`).

Not followed: ``--fit`` (on by default) may *shrink* an unset context at load time
when model and cache would not fit the machine; the estimate then overstates what
the child uses, and the measured RSS (:mod:`~bodhi_trio._llama._group_rss`) replaces it once
the child runs. Multi-head-latent-attention models are estimated from their
``head_count_kv``/``key_length`` as written by current converters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from bodhi_trio._llama._gguf_header import GGUFHeaderError, GGUFValue, read_gguf_metadata
from bodhi_trio._llama._gguf_types import CACHE_TYPE_SIZES
from bodhi_trio._llama._offload import bytes_on_workers, workers_all_elsewhere
from bodhi_trio._llama._server_args import canonical_flag, is_flag

if TYPE_CHECKING:
    from bodhi_trio._llama._rpc_endpoints import RpcEndpoint

__all__ = [
    "OVERHEAD_BYTES",
    "MiB",
    "MemoryEstimate",
    "estimate_model_memory",
    "format_bytes",
]

MiB = 1024 * 1024

OVERHEAD_BYTES = 64 * MiB
"""The allowance for everything besides weights and KV cache.

Measured on the pinned CPU build: a child's RSS minus file and KV cache was 20 MiB on
the demo model and 26-28 MiB on a 443 MB, 1024-wide synthetic llama at 512 to 32768
tokens of context (about 15 MiB of it the binary and ggml libraries). Compute
buffers are *reserved* larger (27-58 MiB there, 257 MiB for the demo model at 262144
tokens: the attention mask grows with the context) but only the part a batch uses
is touched. 64 MiB is twice the measured rest, leaving room for the larger
activations of real models; the measured RSS corrects it once a child runs.
"""

_DEFAULT_SLOTS = 4  # server.cpp: "n_parallel is set to auto, using n_parallel = 4"
_DEFAULT_BATCH = 2048
_DEFAULT_UBATCH = 512
_FALLBACK_CTX = 4096  # a model without context_length (llama.cpp would refuse -c 0)

# create_memory() in llama-model.cpp gives these no KV cache.
_NO_KV_ARCHS = frozenset(
    {
        *("bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe"),
        *("neo-bert", "eurobert", "wavtokenizer-dec", "modern-bert", "gemma-embedding"),
        *("dream", "llada", "llada-moe", "rnd1", "clef"),
    }
)
# The sliding-window layer pattern each architecture defaults to when its GGUF has no
# sliding_window_pattern (src/models/<arch>.cpp, load_swa_pattern): of every n layers,
# all but the last are sliding-window ones.
_SWA_PATTERN = {
    "gemma2": 2,
    "gemma3": 6,
    "gemma3n": 5,
    "cohere2": 4,
    "gpt-oss": 2,
    "llama4": 4,
    "exaone4": 4,
    "olmo2": 4,
}
# Sliding windows these architectures assume when the GGUF does not say.
_SWA_DEFAULT_WINDOW = {"gemma2": 4096, "llama4": 8192}
# Layers with a KV cache of their own, counted from the first, where llama.cpp fixes the
# number (the later layers reuse one); gemma4 says so in attention.shared_kv_layers.
_KV_LAYERS = {"gemma3n": 20}
_SPLIT_NAME = re.compile(r"(?P<prefix>.*)-\d{5}-of-\d{5}\.gguf")
_MAX_PARTS = 99_999
MAX_LAYERS = 512
"""llama.cpp's ``LLAMA_MAX_LAYERS`` (``src/llama-hparams.h``): a model with more fails to load."""


@attrs.frozen
class MemoryEstimate:
    """A model's memory before it has loaded.

    Attributes:
        file_bytes: The GGUF file(s): every part of a split model, and ``--mmproj``.
        kv_bytes: The KV cache for ``n_ctx`` cells.
        overhead_bytes: The fixed allowance, :data:`OVERHEAD_BYTES`.
        n_ctx: The context llama-server will allocate (cells of a full-attention layer,
            all slots together).
        cache_types: The K and V cache types, e.g. ``("f16", "f16")``.
        elsewhere_bytes: Of the weights and KV cache, what llama.cpp RPC workers on
            other machines hold (:mod:`._offload`); 0 without such workers.
    """

    file_bytes: int
    kv_bytes: int
    overhead_bytes: int
    n_ctx: int
    cache_types: tuple[str, str] = ("f16", "f16")
    elsewhere_bytes: int = 0

    @property
    def total(self) -> int:
        """File, KV cache and overhead together, in bytes, wherever they are held."""
        return self.file_bytes + self.kv_bytes + self.overhead_bytes

    @property
    def here(self) -> int:
        """What this machine holds: :attr:`total` less :attr:`elsewhere_bytes`."""
        return self.total - self.elsewhere_bytes

    @property
    def description(self) -> str:
        """For messages, e.g. ``1.1 GiB (file 1.0 GiB + KV cache 64.0 MiB for 4096 tokens...)``."""
        types = "/".join(dict.fromkeys(self.cache_types))
        kv = "no KV cache"
        if self.kv_bytes:
            kv = f"KV cache {format_bytes(self.kv_bytes)} for a context of {self.n_ctx} tokens"
            kv += f" in {types}"
        text = (
            f"{format_bytes(self.total)} (file {format_bytes(self.file_bytes)} + {kv}"
            f" + {format_bytes(self.overhead_bytes)} overhead)"
        )
        if self.elsewhere_bytes:
            text += (
                f", of which {format_bytes(self.elsewhere_bytes)} on RPC workers elsewhere"
                f" and {format_bytes(self.here)} here"
            )
        return text


def format_bytes(size: int) -> str:
    """``size`` in binary units with one decimal: ``512 B``, ``1.5 KiB``, ``8.0 GiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _pad256(value: int) -> int:
    return (value + 255) // 256 * 256


def _flags(server_args: Sequence[str]) -> dict[str, list[str]]:
    """Each canonical flag with the values of its last occurrence (llama.cpp: last wins).

    The order of the keys is that of the last occurrences, so that of two opposite
    switches the later one can be told.
    """
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for token in server_args:
        if is_flag(token):
            flag, sep, value = token.partition("=")
            flag = canonical_flag(flag)
            found.pop(flag, None)
            current = found[flag] = [value] if sep else []
        elif current is not None:
            current.append(token)
    return found


def _switch(flags: Mapping[str, list[str]], name: str) -> bool | None:
    """Whether ``--name`` is on, if given: the later of ``--name`` and ``--no-name`` wins."""
    order = list(flags)
    on = order.index(f"--{name}") if f"--{name}" in flags else -1
    off = order.index(f"--no-{name}") if f"--no-{name}" in flags else -1
    return None if on == off else on > off


def _int_flag(flags: Mapping[str, list[str]], flag: str) -> int | None:
    values = flags.get(flag)
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None  # llama-server refuses it at startup; nothing to estimate for


def _cache_type(flags: Mapping[str, list[str]], flag: str) -> str:
    values = flags.get(flag)
    # llama.cpp matches the type name exactly; an unknown one fails the start.
    return values[0] if values and values[0] in CACHE_TYPE_SIZES else "f16"


def _row_bytes(cache_type: str, elements: int) -> int:
    """Bytes of one cache row, as ``ggml_row_size``: blocks of ``block_size`` elements."""
    block_size, type_size = CACHE_TYPE_SIZES[cache_type]
    return elements * type_size // block_size


@attrs.frozen
class _Layout:
    """How many cells a full-attention and a sliding-window layer get."""

    full_cells: int
    swa_cells: int


def _layout(flags: Mapping[str, list[str]], n_ctx_train: int, window: int, *, swa: bool) -> _Layout:
    ctx_arg = _int_flag(flags, "--ctx-size")
    parallel = _int_flag(flags, "--parallel")
    if parallel is None or parallel < 0:
        slots, unified = _DEFAULT_SLOTS, True  # server.cpp forces unified for "auto"
    else:
        slots, unified = max(1, parallel), bool(_switch(flags, "kv-unified"))
    n_ctx = max(0, ctx_arg or 0)
    per_slot = _int_flag(flags, "--kv-unified-per-slot") or 0
    if per_slot > 0 and ctx_arg is None:
        n_ctx = slots * per_slot
    n_ctx = _pad256(n_ctx if n_ctx > 0 else (n_ctx_train or _FALLBACK_CTX))
    if unified:
        per_stream, streams = n_ctx, 1
    else:
        per_stream, streams = max(256, _pad256(n_ctx // slots)), slots
    if not swa or "--swa-full" in flags:
        return _Layout(per_stream * streams, per_stream * streams)
    batch = _int_flag(flags, "--batch-size") or _DEFAULT_BATCH
    ubatch = min(batch, _int_flag(flags, "--ubatch-size") or _DEFAULT_UBATCH)
    swa_cells = _pad256(min(per_stream, window * (slots if unified else 1) + ubatch))
    return _Layout(per_stream * streams, swa_cells * streams)


def _per_layer(value: GGUFValue | None, layer: int, default: int) -> int:
    """A scalar, or the ``layer``-th entry of a per-layer array (the last if short);
    ``default`` for anything else, a float that is no finite number included."""
    if isinstance(value, tuple):
        if not value:
            return default
        value = value[min(layer, len(value) - 1)]
    if isinstance(value, float) and not math.isfinite(value):
        return default
    if isinstance(value, int | float):
        return int(value)
    return default


def _is_swa_layer(pattern: GGUFValue | None, default_every: int, layer: int) -> bool:
    if isinstance(pattern, tuple) and pattern:
        return bool(pattern[min(layer, len(pattern) - 1)])
    every = int(pattern) if isinstance(pattern, int) else default_every
    return every == 0 or layer % every < every - 1  # llama_hparams::set_swa_pattern


def _kv_layers(
    meta: Mapping[str, GGUFValue], flags: Mapping[str, list[str]], types: tuple[str, str]
) -> tuple[list[int], int]:
    """Each repeating layer's KV cache bytes (one entry per layer: ``block_count`` of
    them, 0 for a layer without a cache of its own), and the context (cells of a
    full-attention layer)."""
    arch = str(meta.get("general.architecture", ""))

    def key(name: str) -> GGUFValue | None:
        return meta.get(f"{arch}.{name}")

    n_ctx_train = _per_layer(key("context_length"), 0, 0)
    window = _per_layer(key("attention.sliding_window"), 0, _SWA_DEFAULT_WINDOW.get(arch, 0))
    pattern = key("attention.sliding_window_pattern")
    swa = window > 0 and (arch in _SWA_PATTERN or pattern is not None)
    layout = _layout(flags, n_ctx_train, window, swa=swa)
    n_layer = _per_layer(key("block_count"), 0, 0)
    if n_layer > MAX_LAYERS:  # llama.cpp refuses the model; a header is not a loop bound
        raise GGUFHeaderError(
            f"{arch}.block_count is {n_layer}: llama.cpp loads at most {MAX_LAYERS} layers"
        )
    if arch in _NO_KV_ARCHS or n_layer <= 0:
        return [0] * max(n_layer, 0), layout.full_cells
    n_embd = _per_layer(key("embedding_length"), 0, 0)
    n_head = _per_layer(key("attention.head_count"), 0, 0)
    head_k = _per_layer(key("attention.key_length"), 0, n_embd // n_head if n_head else 0)
    head_v = _per_layer(key("attention.value_length"), 0, n_embd // n_head if n_head else 0)
    shared = _per_layer(key("attention.shared_kv_layers"), 0, 0)
    per_layer = [0] * n_layer
    for layer in range(min(n_layer - shared, _KV_LAYERS.get(arch, n_layer))):
        n_head_kv = _per_layer(
            key("attention.head_count_kv"), layer, _per_layer(key("attention.head_count"), layer, 0)
        )
        is_swa = swa and _is_swa_layer(pattern, _SWA_PATTERN.get(arch, 0), layer)
        k_dim, v_dim = head_k, head_v
        if is_swa:
            k_dim = _per_layer(key("attention.key_length_swa"), 0, head_k)
            v_dim = _per_layer(key("attention.value_length_swa"), 0, head_v)
        cells = layout.swa_cells if is_swa else layout.full_cells
        row = _row_bytes(types[0], n_head_kv * k_dim) + _row_bytes(types[1], n_head_kv * v_dim)
        per_layer[layer] = cells * row
    return per_layer, layout.full_cells


def _size(path: Path) -> int:
    """A file's size, 0 if it is missing: the child's load fails then, with its own message."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _parts(model_path: Path, meta: Mapping[str, GGUFValue]) -> list[Path]:
    """The model's files: every part of a split model, else the one file."""
    parts = _per_layer(meta.get("split.count"), 0, 1)
    split = _SPLIT_NAME.fullmatch(model_path.name)
    if parts > _MAX_PARTS:  # the parts' names have five digits
        raise GGUFHeaderError(f"split.count is {parts}: at most {_MAX_PARTS} parts can be named")
    if parts > 1 and split is not None:
        # llama.cpp names the parts <prefix>-00001-of-0000N.gguf (llama_split_path).
        names = (f"{split['prefix']}-{n:05d}-of-{parts:05d}.gguf" for n in range(1, parts + 1))
        return [model_path.parent / name for name in names]
    return [model_path]


def _file_bytes(parts: Sequence[Path], flags: Mapping[str, list[str]]) -> int:
    size = parts[0].stat().st_size if len(parts) == 1 else sum(_size(part) for part in parts)
    projector = flags.get("--mmproj")
    if projector:
        size += _size(Path(projector[0]))
    return size


def estimate_model_memory(
    model_path: Path,
    server_args: Sequence[str] = (),
    *,
    workers_here: Collection[RpcEndpoint] = (),
) -> MemoryEstimate:
    """Estimate a model's memory from its GGUF header before it has loaded.

    Blocking (it reads the file header: milliseconds, tens of them for a large
    vocabulary); from async code run it in a worker thread.

    Args:
        model_path: The GGUF file (an HF snapshot symlink is fine); for a split model,
            its first part (``-00001-of-0000N.gguf``).
        server_args: The merged llama-server args the child will get, as argv elements
            (``merge_server_args``'s result); the context, slot, cache and ``--rpc``
            flags count.
        workers_here: RPC workers on this machine besides loopback ones
            (``BODHI_RPC_WORKERS``): what they hold is not "elsewhere".

    Returns:
        The estimate.

    Raises:
        OSError: The file cannot be read.
        GGUFHeaderError: It is not a GGUF file this reader understands.
    """
    flags = _flags(server_args)
    meta = read_gguf_metadata(model_path)
    types = (_cache_type(flags, "--cache-type-k"), _cache_type(flags, "--cache-type-v"))
    kv_per_layer, n_ctx = _kv_layers(meta, flags, types)
    parts = _parts(model_path, meta)
    elsewhere = 0
    if workers_all_elsewhere(flags, workers_here):
        kv_offload = _switch(flags, "kv-offload") is not False
        elsewhere = bytes_on_workers(flags, parts, kv_per_layer, kv_offload=kv_offload)
    return MemoryEstimate(
        file_bytes=_file_bytes(parts, flags),
        kv_bytes=sum(kv_per_layer),
        overhead_bytes=OVERHEAD_BYTES,
        n_ctx=n_ctx,
        cache_types=types,
        elsewhere_bytes=elsewhere,
    )
