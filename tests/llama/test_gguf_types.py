"""Our GGUF constants are the ``gguf`` package's, and nothing a server runs imports it (or
numpy with it) unless it writes the demo model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf

from bodhi_trio._llama._gguf_types import CACHE_TYPE_SIZES, FILE_TYPES, GGUF_MAGIC, GGUFValueType


def test_the_magic_and_the_value_types_are_the_packages() -> None:
    assert GGUF_MAGIC == gguf.GGUF_MAGIC
    assert {t.name: t.value for t in GGUFValueType} == {t.name: t.value for t in gguf.GGUFValueType}


def test_the_cache_type_sizes_are_the_packages() -> None:
    for name, sizes in CACHE_TYPE_SIZES.items():
        assert sizes == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]], name


def test_the_file_types_are_the_packages() -> None:
    # a gguf that knows a new file type fails here: add it to FILE_TYPES
    assert {t.value: t.name for t in gguf.LlamaFileType} == FILE_TYPES


_SERVER_WORK = """
import sys
from pathlib import Path
import bodhi_trio, bodhi_trio._cli, bodhi_trio._http._app
from bodhi_trio._llama._memory import estimate_model_memory
from bodhi_trio._llama._gguf_header import read_gguf_metadata
from bodhi_trio._http._ollama._models import _quantization
path = Path(sys.argv[1])
assert estimate_model_memory(path, ["--cache-type-k", "q8_0"]).kv_bytes > 0
assert read_gguf_metadata(path)["general.architecture"] == "llama"
assert _quantization(15) == "Q4_K_M"
print(sorted(m for m in ("gguf", "numpy") if m in sys.modules))
"""


def test_a_server_reads_models_without_importing_gguf_or_numpy(demo_model_path: Path) -> None:
    """They cost 22 MiB of resident memory (see ``_gguf_types``): the CLI, the app, the
    memory estimate, the header reader and the Ollama facts do without them."""
    done = subprocess.run(
        [sys.executable, "-c", _SERVER_WORK, str(demo_model_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
