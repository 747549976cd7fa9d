"""What of a model llama-server puts on RPC workers on other machines (``--rpc``).

A model spread over llama.cpp RPC workers elsewhere takes little memory on this
machine, and that is why one spreads it: counting all of it against this machine's
budget would refuse the very models ``--rpc`` is for. How the pinned build
(``src/llama-model.cpp``, ``load_tensors``; ``src/llama-kv-cache.cpp``) places a model
once ``--rpc`` gives it devices, and what this module follows:

* ``--n-gpu-layers`` (``-ngl``) ``auto`` (the default) or ``all`` puts every repeating
  layer and the output layer on the devices; ``N`` puts the last ``N`` of the
  ``block_count + 1`` layers there (the output layer counts as the last): layers from
  ``block_count + 1 - N`` on.
* The input layer (``token_embd`` and the like) always stays on the CPU.
* A layer's KV cache is on the layer's device unless ``--no-kv-offload``.
* The layers are split over the devices by their free memory: which worker gets what
  is not known beforehand, so only a model whose workers are *all* elsewhere has
  anything taken off this machine's count. A worker here (a loopback address, or one
  of ``BODHI_RPC_WORKERS``, whatever its address) holds its layers in this machine's
  memory.

Not followed, so that nothing is taken off (the whole model counts here):
``--override-tensor``, ``--cpu-moe``/``--n-cpu-moe`` and ``--device``, which place
tensors in ways this module does not model. ``--fit`` (on by default) may give fewer
layers to workers short of memory; the measured RSS of the running child corrects the
count once it has loaded. The projector (``--mmproj``) is counted here.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from bodhi_trio._llama._gguf_header import read_gguf_tensor_sizes
from bodhi_trio._llama._rpc_endpoints import (
    RpcEndpoint,
    parse_rpc_endpoint,
    split_rpc_servers,
)

__all__ = ["bytes_on_workers", "layers_on_workers", "workers_all_elsewhere"]

# Flags that place tensors in ways not modelled here: with any of them, nothing is
# taken off this machine's count.
_UNMODELLED = ("--override-tensor", "--cpu-moe", "--n-cpu-moe", "--device")
# Tensors of the input layer, which load_tensors always keeps on the CPU.
_INPUT = re.compile(r"(token_embd|token_types|position_embd|token_embd_norm)(\.|$)")
_BLOCK = re.compile(r"blk\.(\d+)\.")


def workers_all_elsewhere(
    flags: Mapping[str, Sequence[str]], workers_here: Collection[RpcEndpoint] = ()
) -> bool:
    """Whether ``--rpc`` names workers and every one of them is on another machine.

    Args:
        flags: Canonical flag → the values of its last occurrence.
        workers_here: Workers on this machine besides loopback ones (``BODHI_RPC_WORKERS``).
    """
    values = flags.get("--rpc")
    if not values:
        return False
    try:
        endpoints = [parse_rpc_endpoint(item) for item in split_rpc_servers(values[0])]
    except ValueError:
        return False  # the arg policy refuses it; nothing to estimate for
    return all(not e.is_loopback and e not in workers_here for e in endpoints)


def layers_on_workers(flags: Mapping[str, Sequence[str]], n_layer: int) -> range:
    """The layers llama-server gives to the RPC devices: repeating layers are
    ``0..n_layer-1``, the output layer is ``n_layer``; empty when tensors are placed in
    a way not modelled here."""
    if any(flag in flags for flag in _UNMODELLED):
        return range(0)
    values = flags.get("--n-gpu-layers")
    value = values[0] if values else "auto"
    if value in ("auto", "all"):
        count = n_layer + 1
    else:
        try:
            count = int(value)
        except ValueError:
            return range(0)  # llama-server refuses it at startup
        if count < 0:
            count = n_layer + 1  # -1 is auto, -2 and below all
    return range(max(n_layer + 1 - count, 0), n_layer + 1)


def bytes_on_workers(
    flags: Mapping[str, Sequence[str]],
    parts: Sequence[Path],
    kv_per_layer: Sequence[int],
    *,
    kv_offload: bool = True,
) -> int:
    """The weights and KV cache llama-server puts on the RPC devices.

    Blocking: reads the tensor infos of every part (a missing part is the child's error
    to report; it counts for nothing here).

    Args:
        flags: Canonical flag → the values of its last occurrence.
        parts: The model's GGUF files (every part of a split model).
        kv_per_layer: The KV cache of each repeating layer, in bytes: one entry per
            layer, so its length is the model's ``block_count``.
        kv_offload: Whether the KV cache goes with its layer (not ``--no-kv-offload``).

    Raises:
        OSError: A part cannot be read.
        GGUFHeaderError: A part's header or tensor infos are not GGUF.
    """
    n_layer = len(kv_per_layer)
    offloaded = layers_on_workers(flags, n_layer)
    if not offloaded:
        return 0
    tensor_sizes: dict[str, int] = {}
    for part in parts:
        if part.exists():
            tensor_sizes.update(read_gguf_tensor_sizes(part))
    total = 0
    for name, size in tensor_sizes.items():
        if _INPUT.match(name):
            continue
        block = _BLOCK.match(name)
        layer = int(block[1]) if block else n_layer  # outside the blocks: the output layer
        if layer in offloaded:
            total += size
    if kv_offload:
        total += sum(kv for layer, kv in enumerate(kv_per_layer) if layer in offloaded)
    return total
