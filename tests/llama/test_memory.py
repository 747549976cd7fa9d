"""The memory estimate from a GGUF header, and the header reader."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import pytest

from bodhi_trio._llama._gguf_header import GGUFHeaderError, read_gguf_metadata
from bodhi_trio._llama._memory import (
    OVERHEAD_BYTES,
    MemoryEstimate,
    estimate_model_memory,
    format_bytes,
)

# The demo model's shape (see _config/_demo.py), checked against its header below so
# that the hand-computed numbers cannot drift from the file.
DEMO_LAYERS, DEMO_HEAD_KV, DEMO_HEAD_DIM, DEMO_TRAIN_CTX = 2, 2, 16, 2048


def test_demo_header_is_what_the_numbers_assume(demo_model_path: Path) -> None:
    meta = read_gguf_metadata(demo_model_path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == DEMO_LAYERS
    assert meta["llama.attention.head_count_kv"] == DEMO_HEAD_KV
    assert meta["llama.embedding_length"] == 64
    assert meta["llama.attention.head_count"] == 4  # head_dim = 64 / 4 = 16
    assert meta["llama.context_length"] == DEMO_TRAIN_CTX


def test_reader_agrees_with_gguf_reader(demo_model_path: Path) -> None:
    ours = read_gguf_metadata(demo_model_path)
    reference = gguf.GGUFReader(demo_model_path)
    for name, field in reference.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, list) and value and isinstance(value[0], str):
            assert name not in ours  # string arrays (the vocabulary) are stepped over
        elif isinstance(value, list) and len(value) > 4096:
            assert name not in ours
        elif isinstance(value, list):
            assert ours[name] == tuple(value), name
        else:
            assert ours[name] == pytest.approx(value), name
    assert "tokenizer.ggml.tokens" not in ours


def test_demo_estimate_by_hand(demo_model_path: Path) -> None:
    file_bytes = demo_model_path.stat().st_size

    def kv(n_ctx: int, bytes_per_element: float) -> int:
        # 2 (K and V) x layers x cells x kv heads x head dim x bytes per element
        return round(2 * DEMO_LAYERS * n_ctx * DEMO_HEAD_KV * DEMO_HEAD_DIM * bytes_per_element)

    small = estimate_model_memory(demo_model_path, ["--ctx-size", "512", "--threads", "1"])
    assert small == MemoryEstimate(file_bytes, kv(512, 2), OVERHEAD_BYTES, 512, ("f16", "f16"))
    assert small.kv_bytes == 131_072
    assert small.total == file_bytes + 131_072 + OVERHEAD_BYTES

    default = estimate_model_memory(demo_model_path, [])  # the training context
    assert (default.n_ctx, default.kv_bytes) == (DEMO_TRAIN_CTX, kv(2048, 2)) == (2048, 524_288)

    quantized = estimate_model_memory(
        demo_model_path, ["-c", "4096", "--cache-type-k", "q8_0", "-ctv", "q8_0"]
    )
    # q8_0: blocks of 32 values in 34 bytes = 1.0625 bytes each
    assert quantized.kv_bytes == kv(4096, 34 / 32) == 557_056
    assert quantized.cache_types == ("q8_0", "q8_0")
    mixed = estimate_model_memory(demo_model_path, ["-c", "4096", "-ctk", "q4_0"])
    assert mixed.kv_bytes == kv(4096, 18 / 32) // 2 + kv(4096, 2) // 2  # K in q4_0, V in f16
    assert "q4_0/f16" in mixed.description

    assert small.description == (
        f"{format_bytes(small.total)} (file {format_bytes(file_bytes)} + KV cache 128.0 KiB"
        " for a context of 512 tokens in f16 + 64.0 MiB overhead)"
    )


@pytest.mark.parametrize(
    ("args", "n_ctx"),
    [
        ([], 2048),  # no -c: the model's training context
        (["-c", "0"], 2048),  # 0: likewise
        (["--ctx-size=1000"], 1024),  # rounded up to 256
        (["-c", "512", "-c", "768"], 768),  # the last one wins, as in llama.cpp
        (["-c", "1000", "--parallel", "4"], 1024),  # explicit slots: 4 streams of 256
        (["-c", "1000", "-np", "3"], 1536),  # 3 streams of pad256(1024 / 3) = 512
        (["-c", "1000", "-np", "3", "-kvu"], 1024),  # unified: one stream
        (["-c", "1000", "-np", "3", "-kvu", "--no-kv-unified"], 1536),
        (["-c", "1000", "-np", "-1"], 1024),  # auto: 4 slots, unified
        (["--kv-unified-per-slot", "300"], 1280),  # 4 auto slots x 300, padded
        (["-np", "2", "--kv-unified-per-slot", "300"], 1024),  # 600 -> 768 -> 2 x 512
        (["-c", "512", "--kv-unified-per-slot", "300"], 512),  # -c wins
        (["-c", "many"], 2048),  # llama-server refuses it; the estimate does not fail
    ],
)
def test_context_rules(demo_model_path: Path, args: list[str], n_ctx: int) -> None:
    estimate = estimate_model_memory(demo_model_path, args)
    assert estimate.n_ctx == n_ctx
    assert estimate.kv_bytes == 2 * DEMO_LAYERS * n_ctx * DEMO_HEAD_KV * DEMO_HEAD_DIM * 2


def write_header(path: Path, arch: str, values: dict[str, object]) -> Path:
    """A GGUF file with metadata only (no tensors)."""
    writer = gguf.GGUFWriter(path, arch)
    for key, value in values.items():
        name = key.replace("{arch}", arch)
        if isinstance(value, list):
            writer.add_array(name, value)
        elif isinstance(value, int):
            writer.add_uint32(name, value)
        else:
            writer.add_string(name, str(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_sliding_window_layers_keep_a_window(tmp_path: Path) -> None:
    # gemma3 defaults to 5 sliding-window layers of every 6: layers 5 and 11 are full.
    model = write_header(
        tmp_path / "g3.gguf",
        "gemma3",
        {
            "{arch}.block_count": 12,
            "{arch}.context_length": 131072,
            "{arch}.embedding_length": 1024,
            "{arch}.attention.head_count": 8,
            "{arch}.attention.head_count_kv": 4,
            "{arch}.attention.key_length": 128,
            "{arch}.attention.value_length": 128,
            "{arch}.attention.sliding_window": 1024,
        },
    )
    row = 2 * 4 * 128 * 2  # K and V, 4 kv heads of 128, f16
    window_cells = 4608  # pad256(min(131072, 1024 * 4 slots + 512 ubatch))
    assert estimate_model_memory(model).kv_bytes == (2 * 131072 + 10 * window_cells) * row
    assert estimate_model_memory(model, ["--swa-full"]).kv_bytes == 12 * 131072 * row
    # 2 separate streams: the window is per stream (1024 + 512 -> 1536 cells each)
    two = estimate_model_memory(model, ["-c", "8192", "-np", "2"])
    assert two.kv_bytes == (2 * 8192 + 10 * 2 * 1536) * row
    assert estimate_model_memory(model, ["-c", "2048"]).kv_bytes == 12 * 2048 * row


def test_per_layer_arrays(tmp_path: Path) -> None:
    # gemma4 style: the pattern and the kv heads per layer, other head dims for SWA layers
    model = write_header(
        tmp_path / "g4.gguf",
        "gemma4",
        {
            "{arch}.block_count": 3,
            "{arch}.context_length": 8192,
            "{arch}.attention.head_count": 16,
            "{arch}.attention.head_count_kv": [8, 8, 2],
            "{arch}.attention.key_length": 512,
            "{arch}.attention.value_length": 512,
            "{arch}.attention.key_length_swa": 256,
            "{arch}.attention.value_length_swa": 256,
            "{arch}.attention.sliding_window": 512,
            "{arch}.attention.sliding_window_pattern": [True, True, False],
        },
    )
    swa_cells = 2560  # pad256(512 * 4 + 512)
    expected = 2 * swa_cells * (2 * 8 * 256 * 2) + 8192 * (2 * 2 * 512 * 2)
    assert estimate_model_memory(model).kv_bytes == expected


def test_layers_sharing_a_cache(tmp_path: Path) -> None:
    values: dict[str, object] = {
        "{arch}.block_count": 30,
        "{arch}.context_length": 4096,
        "{arch}.embedding_length": 2048,
        "{arch}.attention.head_count": 8,
        "{arch}.attention.head_count_kv": 2,
        "{arch}.attention.key_length": 256,
        "{arch}.attention.value_length": 256,
    }
    row = 2 * 2 * 256 * 2
    plain = estimate_model_memory(write_header(tmp_path / "p.gguf", "llama", values))
    assert plain.kv_bytes == 30 * 4096 * row
    shared = {**values, "{arch}.attention.shared_kv_layers": 10}
    assert estimate_model_memory(write_header(tmp_path / "s.gguf", "gemma4", shared)).kv_bytes == (
        20 * 4096 * row
    )
    # gemma3n: llama.cpp fixes 20 layers with a cache; its pattern is 4 windowed of 5
    n3 = {**values, "{arch}.attention.sliding_window": 512}
    windowed = 16 * 2560 + 4 * 4096  # layers 4, 9, 14, 19 are full
    assert estimate_model_memory(write_header(tmp_path / "n.gguf", "gemma3n", n3)).kv_bytes == (
        windowed * row
    )


def test_models_without_kv_cache(tmp_path: Path) -> None:
    values: dict[str, object] = {
        "{arch}.block_count": 12,
        "{arch}.context_length": 512,
        "{arch}.embedding_length": 384,
        "{arch}.attention.head_count": 12,
    }
    encoder = estimate_model_memory(write_header(tmp_path / "b.gguf", "bert", values))
    assert (encoder.kv_bytes, encoder.n_ctx) == (0, 512)
    assert "no KV cache" in encoder.description
    # hybrid models: layers with no kv heads are recurrent and hold no KV cache
    hybrid = write_header(
        tmp_path / "h.gguf",
        "lfm2",
        {**values, "{arch}.attention.head_count_kv": [0, 4, 0, 0, 4, 0, 0, 0, 0, 0, 0, 4]},
    )
    assert estimate_model_memory(hybrid).kv_bytes == 3 * 512 * 2 * 4 * 32 * 2
    nothing = estimate_model_memory(write_header(tmp_path / "n.gguf", "mystery", {}))
    assert (nothing.kv_bytes, nothing.n_ctx) == (0, 4096)


def test_split_model_and_projector_count_every_file(tmp_path: Path) -> None:
    first = write_header(tmp_path / "m-00001-of-00003.gguf", "llama", {"split.count": 3})
    (tmp_path / "m-00002-of-00003.gguf").write_bytes(b"x" * 1000)
    (tmp_path / "m-00003-of-00003.gguf").write_bytes(b"x" * 500)
    projector = tmp_path / "mmproj.gguf"
    projector.write_bytes(b"x" * 70)
    size = first.stat().st_size
    assert estimate_model_memory(first).file_bytes == size + 1500
    with_projector = estimate_model_memory(first, ["--mmproj", str(projector)])
    assert with_projector.file_bytes == size + 1570
    # A missing part is the child's error to report; the estimate counts what is there.
    (tmp_path / "m-00003-of-00003.gguf").unlink()
    assert estimate_model_memory(first, ["-mm", str(tmp_path / "nope")]).file_bytes == size + 1000


def test_big_endian_header(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_uint32("llama.block_count", 3)
    writer.add_array("llama.attention.head_count_kv", [8, 8, 2])
    writer.add_array("tokens", ["a", "bb", "ccc"])
    writer.add_float32("llama.rope.freq_base", 1.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert read_gguf_metadata(path) == {
        "general.architecture": "llama",
        "llama.block_count": 3,
        "llama.attention.head_count_kv": (8, 8, 2),
        "llama.rope.freq_base": 1.5,
    }


def test_not_a_gguf_file(tmp_path: Path, demo_model_path: Path) -> None:
    cases = {
        "empty": b"",
        "text": b"this is not a model file at all, not even close",
        "cut": demo_model_path.read_bytes()[:2000],  # in the middle of the vocabulary
        "version": b"GGUF" + (7).to_bytes(4, "little") + bytes(16),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(GGUFHeaderError, match=str(path)):
            estimate_model_memory(path)
    with pytest.raises(FileNotFoundError):
        estimate_model_memory(tmp_path / "missing.gguf")


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(64 * 1024 * 1024) == "64.0 MiB"
    assert format_bytes(8 * 1024**3) == "8.0 GiB"
    assert format_bytes(3 * 1024**5) == "3072.0 TiB"


def test_a_header_cannot_make_the_estimate_loop_or_hoard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few hundred bytes of header once made the estimate walk 2^26 layers (70 s,
    2.7 GB), its numbers raise OverflowError, its keys fill the memory: every bound
    that llama.cpp itself has is kept, and the rest is stepped over."""
    huge = write_header(tmp_path / "layers.gguf", "llama", {"{arch}.block_count": 1 << 26})
    with pytest.raises(GGUFHeaderError, match="loads at most 512 layers"):
        estimate_model_memory(huge)
    writer = gguf.GGUFWriter(tmp_path / "inf.gguf", "llama")
    writer.add_float32("llama.block_count", math.inf)
    writer.add_float32("llama.context_length", math.nan)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    endless = estimate_model_memory(tmp_path / "inf.gguf")
    assert (endless.kv_bytes, endless.n_ctx) == (0, 4096)  # read as absent, not an error
    parts = write_header(tmp_path / "m-00001-of-00002.gguf", "llama", {"split.count": 1_000_000})
    with pytest.raises(GGUFHeaderError, match=r"split\.count is 1000000"):
        estimate_model_memory(parts)

    many = tmp_path / "many.gguf"
    header = bytearray(write_header(many, "llama", {}).read_bytes())
    header[16:24] = (70_000).to_bytes(8, "little")  # the key count, past the one written
    many.write_bytes(header)
    with pytest.raises(GGUFHeaderError, match="70000 metadata keys"):
        read_gguf_metadata(many)

    long_values: dict[str, object] = {"a.template": "x" * (2 * 1024 * 1024), "b.after": "kept"}
    stepped = read_gguf_metadata(write_header(tmp_path / "long.gguf", "llama", long_values))
    assert "a.template" not in stepped  # longer than any template: not decoded
    assert stepped["b.after"] == "kept"
    monkeypatch.setattr("bodhi_trio._llama._gguf_header._MAX_KEPT_BYTES", 1000)
    hoard = write_header(tmp_path / "hoard.gguf", "llama", {f"k{i}": "v" * 100 for i in range(20)})
    with pytest.raises(GGUFHeaderError, match="metadata to keep"):
        read_gguf_metadata(hoard)
