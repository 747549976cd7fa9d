"""Tests of the demo model generator (no llama-server needed)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import huggingface_hub
import numpy as np

from bodhi_trio._config._demo import (
    DEMO_ALIAS,
    DEMO_FILENAME,
    DEMO_REPO,
    DemoModel,
    build_demo_gguf,
    ensure_demo_model,
    write_corrupt_gguf,
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tokens(path: Path) -> list[str]:
    reader = gguf.GGUFReader(path)
    field = reader.fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def test_constants() -> None:
    assert DEMO_ALIAS == "demo:tiny"
    assert DEMO_REPO == "bodhi-trio/tiny-random-llama"
    assert DEMO_FILENAME == "tiny-random-llama.gguf"


def test_build_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    build_demo_gguf(a)
    build_demo_gguf(b, seed=0)
    build_demo_gguf(c, seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.stat().st_size == c.stat().st_size


def test_size_is_small(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    build_demo_gguf(path)
    assert 100_000 < path.stat().st_size < 1_000_000


def test_contents(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    build_demo_gguf(path)
    reader = gguf.GGUFReader(path)

    def scalar(key: str) -> object:
        return reader.fields[key].contents()

    assert scalar("general.architecture") == "llama"
    assert scalar("tokenizer.ggml.model") == "llama"
    assert scalar("tokenizer.ggml.add_bos_token") is True
    assert "<|im_start|>" in str(scalar("tokenizer.chat_template"))
    assert scalar("llama.embedding_length") == 64
    assert scalar("llama.block_count") == 2
    assert scalar("llama.attention.head_count") == 4
    assert scalar("llama.attention.head_count_kv") == 2

    tokens = _tokens(path)
    assert len(tokens) == len(set(tokens))
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert {f"<0x{b:02X}>" for b in range(256)} <= set(tokens)
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[0] == gguf.TokenType.UNKNOWN
    assert types[1] == types[2] == gguf.TokenType.CONTROL
    assert types.count(gguf.TokenType.BYTE) == 256
    assert len(reader.fields["tokenizer.ggml.scores"].contents()) == len(tokens)

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 2 * 9
    # ggml dims (ne) are reversed with respect to numpy shapes.
    assert list(tensors["token_embd.weight"].shape) == [64, len(tokens)]
    assert list(tensors["output.weight"].shape) == [64, len(tokens)]
    assert list(tensors["blk.1.attn_k.weight"].shape) == [64, 32]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [128, 64]
    assert np.all(tensors["output_norm.weight"].data == 1.0)
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())


def test_ensure_lays_out_hf_cache(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    model = ensure_demo_model(hub)
    repo_dir = hub / "models--bodhi-trio--tiny-random-llama"

    assert isinstance(model, DemoModel)
    assert (model.repo, model.filename) == (DEMO_REPO, DEMO_FILENAME)
    assert (repo_dir / "refs" / "main").read_bytes() == model.snapshot.encode()
    assert len(model.snapshot) == 40
    assert model.path == repo_dir / "snapshots" / model.snapshot / DEMO_FILENAME

    target = os.readlink(model.path)
    assert not os.path.isabs(target)
    assert target.startswith("../../blobs/")
    blob = (model.path.parent / target).resolve()
    assert blob == model.path.resolve()
    assert blob.parent == (repo_dir / "blobs").resolve()
    assert blob.name == _sha256(blob)
    assert model.snapshot == hashlib.sha1(blob.read_bytes()).hexdigest()

    built = tmp_path / "m.gguf"
    build_demo_gguf(built)
    assert blob.read_bytes() == built.read_bytes()
    assert sorted(p.name for p in (repo_dir / "blobs").iterdir()) == [blob.name]

    found = huggingface_hub.try_to_load_from_cache(DEMO_REPO, DEMO_FILENAME, cache_dir=hub)
    assert found == str(model.path)


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    first = ensure_demo_model(tmp_path)
    ref = tmp_path / "models--bodhi-trio--tiny-random-llama" / "refs" / "main"
    before = [os.stat(p, follow_symlinks=False) for p in (ref, first.path, first.path.resolve())]

    second = ensure_demo_model(tmp_path)
    after = [os.stat(p, follow_symlinks=False) for p in (ref, second.path, second.path.resolve())]
    assert second == first
    assert [(s.st_ino, s.st_mtime_ns) for s in after] == [(s.st_ino, s.st_mtime_ns) for s in before]


def test_ensure_repairs_missing_blob(tmp_path: Path) -> None:
    first = ensure_demo_model(tmp_path)
    first.path.resolve().unlink()
    second = ensure_demo_model(tmp_path)
    assert second == first
    assert second.path.resolve().name == _sha256(second.path)


def test_ensure_concurrent_callers_agree(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        models = list(pool.map(ensure_demo_model, [tmp_path] * 16))
    assert len(set(models)) == 1
    repo_dir = tmp_path / "models--bodhi-trio--tiny-random-llama"
    leftovers = [p for p in repo_dir.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert models[0].path.resolve().name == _sha256(models[0].path)


def test_corrupt_has_duplicate_token(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.gguf", tmp_path / "bad.gguf"
    build_demo_gguf(good)
    write_corrupt_gguf(bad)
    assert good.read_bytes() != bad.read_bytes()
    tokens = _tokens(bad)
    assert len(tokens) == len(_tokens(good))
    duplicates = [t for t, n in Counter(tokens).items() if n > 1]
    assert len(duplicates) == 1
