"""The demo model: a tiny llama-architecture GGUF with random weights.

:func:`build_demo_gguf` writes a deterministic model (a few hundred KB) with the
``gguf`` package: two transformer blocks, 64-wide embeddings, a byte-fallback
SentencePiece (``llama``) vocabulary and a ChatML chat template, so llama-server
loads it in well under a second and serves ``/v1/chat/completions`` on it. Its
text is gibberish; everything around it is real llama-server.

:func:`ensure_demo_model` places it in a Hugging Face hub cache exactly as
``huggingface_hub`` lays out a download (``blobs/``, ``snapshots/``, ``refs/``),
and :func:`write_corrupt_gguf` writes the same model with a duplicated vocabulary
entry, which llama.cpp refuses to load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEMO_ALIAS",
    "DEMO_FILENAME",
    "DEMO_REPO",
    "DemoModel",
    "build_demo_gguf",
    "ensure_demo_model",
    "temp_path",
    "write_corrupt_gguf",
]

DEMO_ALIAS = "demo:tiny"
DEMO_REPO = "bodhi-trio/tiny-random-llama"
DEMO_FILENAME = "tiny-random-llama.gguf"

_N_CTX = 2048
_N_EMBD = 64
_N_LAYER = 2
_N_FF = 128
_N_HEAD = 4
_N_HEAD_KV = 2
_HEAD_DIM = _N_EMBD // _N_HEAD

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = (
    *("the", "and", "to", "of", "in", "is", "it", "you", "that", "hello", "world"),
    *("demo", "tiny", "model", "random", "llama", "bodhi", "trio", "token"),
)
_PIECES = tuple("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()")

_BLOB_RE = re.compile(r"[0-9a-f]{64}")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


@attrs.frozen
class DemoModel:
    """Where :func:`ensure_demo_model` placed the demo model.

    Attributes:
        repo: The Hugging Face repo id, :data:`DEMO_REPO`.
        filename: The file name inside the repo, :data:`DEMO_FILENAME`.
        snapshot: The snapshot (commit) hash, 40 hex digits.
        path: The snapshot path of the file (a symlink into ``blobs/``).
    """

    repo: str
    filename: str
    snapshot: str
    path: Path


def _vocab(*, corrupt: bool) -> tuple[list[str], list[float], list[int]]:
    """Return the token strings, scores and types of the demo vocabulary."""
    import gguf  # not at the top: see _write

    tt = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL, tt.CONTROL, tt.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [tt.BYTE] * 256
    normal = ["\u2581", *_PIECES, *(f"\u2581{p}" for p in _PIECES[:26])]
    normal += [f"\u2581{w}" for w in _WORDS]
    if corrupt:
        normal[-1] = normal[-2]  # two entries with the same string: llama.cpp aborts
    tokens += normal
    types += [tt.NORMAL] * len(normal)
    # SPM merges prefer higher scores; control, byte and unknown tokens score 0.
    scores = [0.0] * (len(tokens) - len(normal))
    scores += [float(len(t)) - i / 1000.0 for i, t in enumerate(normal)]
    return tokens, scores, [int(t) for t in types]


def _write(path: Path, *, seed: int, corrupt: bool) -> None:
    # gguf and numpy are imported only here: a server that does not write the demo model
    # never holds them (22 MiB of resident memory; see bodhi_trio._llama._gguf_types).
    import gguf
    import numpy as np

    tokens, scores, types = _vocab(corrupt=corrupt)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    def ones() -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        return np.ones(_N_EMBD, dtype=np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_name("tiny-random-llama")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_vocab_size(n_vocab)
        writer.add_context_length(_N_CTX)
        writer.add_embedding_length(_N_EMBD)
        writer.add_block_count(_N_LAYER)
        writer.add_feed_forward_length(_N_FF)
        writer.add_head_count(_N_HEAD)
        writer.add_head_count_kv(_N_HEAD_KV)
        writer.add_rope_dimension_count(_HEAD_DIM)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)

        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(_CHAT_TEMPLATE)

        # numpy shapes are the reverse of ggml's ne: (rows = out features, cols = in features).
        writer.add_tensor("token_embd.weight", weight(n_vocab, _N_EMBD))
        for i in range(_N_LAYER):
            blk = f"blk.{i}"
            writer.add_tensor(f"{blk}.attn_norm.weight", ones())
            writer.add_tensor(f"{blk}.attn_q.weight", weight(_N_HEAD * _HEAD_DIM, _N_EMBD))
            writer.add_tensor(f"{blk}.attn_k.weight", weight(_N_HEAD_KV * _HEAD_DIM, _N_EMBD))
            writer.add_tensor(f"{blk}.attn_v.weight", weight(_N_HEAD_KV * _HEAD_DIM, _N_EMBD))
            writer.add_tensor(f"{blk}.attn_output.weight", weight(_N_EMBD, _N_HEAD * _HEAD_DIM))
            writer.add_tensor(f"{blk}.ffn_norm.weight", ones())
            writer.add_tensor(f"{blk}.ffn_gate.weight", weight(_N_FF, _N_EMBD))
            writer.add_tensor(f"{blk}.ffn_up.weight", weight(_N_FF, _N_EMBD))
            writer.add_tensor(f"{blk}.ffn_down.weight", weight(_N_EMBD, _N_FF))
        writer.add_tensor("output_norm.weight", ones())
        writer.add_tensor("output.weight", weight(n_vocab, _N_EMBD))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def build_demo_gguf(path: Path, *, seed: int = 0) -> None:
    """Write the demo model to ``path``.

    The output is byte-for-byte the same for the same ``seed`` (and ``gguf``
    version): weights come from a seeded :func:`numpy.random.default_rng` and
    nothing time-dependent is written.

    Args:
        path: The file to write (overwritten if it exists).
        seed: The seed of the random weights.
    """
    _write(path, seed=seed, corrupt=False)


def write_corrupt_gguf(path: Path) -> None:
    """Write the demo model with two vocabulary entries of the same string.

    The file is a well-formed GGUF, but llama.cpp aborts while loading its
    vocabulary; tests use it as the "corrupt model" case.

    Args:
        path: The file to write (overwritten if it exists).
    """
    _write(path, seed=0, corrupt=True)


@contextlib.contextmanager
def temp_path(directory: Path, suffix: str) -> Iterator[Path]:
    """Yield a fresh, unused path in ``directory``; remove it afterwards if still there."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _existing(repo_dir: Path) -> DemoModel | None:
    """Return the demo model already in ``repo_dir`` if its layout is whole and consistent."""
    try:
        commit = (repo_dir / "refs" / "main").read_text(encoding="ascii")
        if not _COMMIT_RE.fullmatch(commit):
            return None
        link = repo_dir / "snapshots" / commit / DEMO_FILENAME
        target = os.readlink(link)
    except (OSError, UnicodeDecodeError):
        return None
    blob = Path(target).name
    if target != f"../../blobs/{blob}" or not _BLOB_RE.fullmatch(blob):
        return None
    blob_path = repo_dir / "blobs" / blob
    if not blob_path.is_file() or hashlib.sha256(blob_path.read_bytes()).hexdigest() != blob:
        return None
    return DemoModel(repo=DEMO_REPO, filename=DEMO_FILENAME, snapshot=commit, path=link)


def ensure_demo_model(hub_cache: Path) -> DemoModel:
    """Place the demo model in a Hugging Face hub cache, unless it is already there.

    The layout is the one ``huggingface_hub`` writes::

        <hub_cache>/models--bodhi-trio--tiny-random-llama/
            blobs/<sha256 of the file>
            snapshots/<commit>/tiny-random-llama.gguf -> ../../blobs/<sha256>
            refs/main                                   (<commit>, no newline)

    ``<commit>`` is the SHA-1 of the file. Every file is written to a temporary
    name and renamed into place, blob first and ref last, so concurrent callers
    never see a partial file and all end with the same content. An existing,
    consistent copy (ref, symlink and a blob matching its name) is kept as is.

    Args:
        hub_cache: The hub cache directory (e.g. ``~/.cache/huggingface/hub``).

    Returns:
        Where the model is.
    """
    repo_dir = hub_cache / ("models--" + DEMO_REPO.replace("/", "--"))
    found = _existing(repo_dir)
    if found is not None:
        return found

    blobs = repo_dir / "blobs"
    refs = repo_dir / "refs"
    blobs.mkdir(parents=True, exist_ok=True)
    refs.mkdir(parents=True, exist_ok=True)

    with temp_path(blobs, ".incomplete") as tmp:
        build_demo_gguf(tmp)
        data = tmp.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        commit = hashlib.sha1(data).hexdigest()
        os.replace(tmp, blobs / blob)

    snapshot_dir = repo_dir / "snapshots" / commit
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    link = snapshot_dir / DEMO_FILENAME
    with temp_path(snapshot_dir, ".lnk") as tmp:
        tmp.symlink_to(f"../../blobs/{blob}")
        os.replace(tmp, link)

    with temp_path(refs, ".ref") as tmp:
        tmp.write_text(commit, encoding="ascii")
        os.replace(tmp, refs / "main")

    return DemoModel(repo=DEMO_REPO, filename=DEMO_FILENAME, snapshot=commit, path=link)
