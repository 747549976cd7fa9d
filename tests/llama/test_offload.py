"""What a model spread over llama.cpp RPC workers elsewhere leaves on this machine, and
the tensor sizes read from a GGUF file."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from bodhi_trio._llama._gguf_header import GGUFHeaderError, read_gguf_tensor_sizes
from bodhi_trio._llama._memory import estimate_model_memory
from bodhi_trio._llama._offload import layers_on_workers
from bodhi_trio._llama._rpc_endpoints import RpcEndpoint

# A two-layer llama: 2 KV heads of 16 dimensions; every tensor's size a multiple of 32,
# so the sizes read back carry no alignment padding.
EMBD, VOCAB = 64, 100
INPUT = EMBD * VOCAB * 4  # token_embd, f32
BLOCK = EMBD * EMBD * 4  # one attn_q per block, f32
OUTPUT = EMBD * 4 + EMBD * VOCAB * 4  # output_norm and output, f32
KV_LAYER = 512 * 2 * 16 * 2 * 2  # cells x kv heads x head dim x (K and V) x f16


def write_model(path: Path, *, blocks: range = range(2), split: int = 0) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_uint32("llama.embedding_length", EMBD)
    writer.add_uint32("llama.attention.head_count", 4)
    writer.add_uint32("llama.attention.head_count_kv", 2)
    writer.add_uint32("llama.context_length", 2048)
    if split:
        writer.add_uint16("split.count", split)
    if 0 in blocks:
        writer.add_tensor("token_embd.weight", np.ones((VOCAB, EMBD), dtype=np.float32))
    for block in blocks:
        writer.add_tensor(f"blk.{block}.attn_q.weight", np.ones((EMBD, EMBD), dtype=np.float32))
    if 1 in blocks:
        writer.add_tensor("output_norm.weight", np.ones(EMBD, dtype=np.float32))
        writer.add_tensor("output.weight", np.ones((VOCAB, EMBD), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_tensor_sizes_agree_with_gguf_reader(tmp_path: Path, demo_model_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf")
    assert read_gguf_tensor_sizes(model) == {
        "token_embd.weight": INPUT,
        "blk.0.attn_q.weight": BLOCK,
        "blk.1.attn_q.weight": BLOCK,
        "output_norm.weight": EMBD * 4,
        "output.weight": EMBD * VOCAB * 4,
    }
    ours = read_gguf_tensor_sizes(demo_model_path)
    reference = gguf.GGUFReader(demo_model_path)
    assert set(ours) == {tensor.name for tensor in reference.tensors}
    for tensor in reference.tensors:  # the data, then at most the alignment's padding
        assert tensor.n_bytes <= ours[tensor.name] < tensor.n_bytes + reference.alignment
    data_start = min(int(tensor.data_offset) for tensor in reference.tensors)
    assert sum(ours.values()) == demo_model_path.stat().st_size - data_start


def test_broken_tensor_infos_are_refused(tmp_path: Path) -> None:
    whole = write_model(tmp_path / "m.gguf").read_bytes()
    infos = whole.index(b"token_embd.weight") - 8  # its name's length comes first
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: infos + 20])
    with pytest.raises(GGUFHeaderError, match="cut short"):
        read_gguf_tensor_sizes(cut)
    dims = infos + 8 + len(b"token_embd.weight")
    many = tmp_path / "dims.gguf"
    many.write_bytes(whole[:dims] + struct.pack("<I", 9) + whole[dims + 4 :])
    with pytest.raises(GGUFHeaderError, match="9 dimensions"):
        read_gguf_tensor_sizes(many)
    offset = dims + 4 + 2 * 8 + 4  # after two dimensions and the type
    beyond = tmp_path / "beyond.gguf"
    beyond.write_bytes(whole[:offset] + struct.pack("<Q", 1 << 40) + whole[offset + 8 :])
    with pytest.raises(GGUFHeaderError, match="outside the file"):
        read_gguf_tensor_sizes(beyond)


ELSEWHERE = ("--rpc", "10.0.0.5:50052", "--ctx-size", "512")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), 2 * BLOCK + OUTPUT + 2 * KV_LAYER),  # auto: every layer and the output
        (("-ngl", "all"), 2 * BLOCK + OUTPUT + 2 * KV_LAYER),
        (("--gpu-layers", "-1"), 2 * BLOCK + OUTPUT + 2 * KV_LAYER),
        (("--n_gpu_layers", "99"), 2 * BLOCK + OUTPUT + 2 * KV_LAYER),
        (("-ngl", "2"), BLOCK + OUTPUT + KV_LAYER),  # the last of the blocks and the output
        (("-ngl", "1"), OUTPUT),
        (("-ngl", "0"), 0),
        (("-nkvo",), 2 * BLOCK + OUTPUT),  # the KV cache stays here
        (("--no-kv-offload", "--kv-offload"), 2 * BLOCK + OUTPUT + 2 * KV_LAYER),
        (("-ot", "blk=CPU"), 0),  # placements this estimate does not model: all here
        (("--cpu-moe",), 0),
        (("-dev", "none"), 0),
        (("-ngl", "many"), 0),
    ],
)
def test_what_workers_elsewhere_hold(tmp_path: Path, args: tuple[str, ...], expected: int) -> None:
    model = write_model(tmp_path / "m.gguf")
    estimate = estimate_model_memory(model, (*ELSEWHERE, *args))
    assert estimate.kv_bytes == 2 * KV_LAYER
    assert estimate.elsewhere_bytes == expected
    assert estimate.here == estimate.total - expected
    assert ("on RPC workers elsewhere" in estimate.description) is (expected > 0)


@pytest.mark.parametrize(
    "servers",
    [
        "127.0.0.1:50052",
        "localhost:50052",
        "127.3.2.1:1",
        "10.0.0.5:50052,127.0.0.1:50053",  # a worker here may get any share of it
        "10.0.0.5:50052,",  # llama-server's own error to report
        "10.0.0.5",
    ],
)
def test_a_worker_here_keeps_the_whole_model_here(tmp_path: Path, servers: str) -> None:
    model = write_model(tmp_path / "m.gguf")
    estimate = estimate_model_memory(model, ("--rpc", servers, "--ctx-size", "512"))
    assert estimate.elsewhere_bytes == 0
    assert estimate.here == estimate.total


def test_workers_this_server_runs_are_here_whatever_their_address(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf")
    ours = (RpcEndpoint("10.0.0.5", 50052),)
    assert estimate_model_memory(model, ELSEWHERE, workers_here=ours).elsewhere_bytes == 0
    others = (RpcEndpoint("10.0.0.5", 50053),)
    assert estimate_model_memory(model, ELSEWHERE, workers_here=others).elsewhere_bytes > 0
    assert estimate_model_memory(model, ("--ctx-size", "512")).elsewhere_bytes == 0


def test_every_part_of_a_split_model_counts(tmp_path: Path) -> None:
    first = write_model(tmp_path / "m-00001-of-00002.gguf", blocks=range(1), split=2)
    write_model(tmp_path / "m-00002-of-00002.gguf", blocks=range(1, 2), split=2)
    estimate = estimate_model_memory(first, ELSEWHERE)
    assert estimate.elsewhere_bytes == 2 * BLOCK + OUTPUT + 2 * KV_LAYER
    (tmp_path / "m-00002-of-00002.gguf").unlink()  # the child's error to report
    assert estimate_model_memory(first, ELSEWHERE).elsewhere_bytes == BLOCK + 2 * KV_LAYER


def test_layers_on_workers() -> None:
    assert layers_on_workers({}, 30) == range(31)
    assert layers_on_workers({"--n-gpu-layers": ["10"]}, 30) == range(21, 31)
    assert layers_on_workers({"--n-gpu-layers": ["40"]}, 30) == range(31)
    assert layers_on_workers({"--n-gpu-layers": ["-2"]}, 30) == range(31)
    assert layers_on_workers({"--n-gpu-layers": ["0"]}, 30) == range(31, 31)
    assert layers_on_workers({"--n-cpu-moe": ["4"]}, 30) == range(0)
