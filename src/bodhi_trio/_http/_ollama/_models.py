"""What Ollama's model routes tell of an alias: names, ``details``, ``model_info``.

Names: an alias is a model name; ``name`` and ``name:latest`` are the same model, so
an alias ``foo`` is listed as ``foo:latest`` and found under both names, while
``demo:tiny`` has its own tag.

Facts come from the alias file (its modification time), the GGUF file in the Hugging
Face cache (its size; its digest, which is the name of the blob the cache stores it
under; its metadata, read with :func:`read_gguf_metadata`) and the context's state.
Reading them touches the disk, so callers run :func:`model_facts` in a worker thread.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from bodhi_trio._config._hf_cache import resolve_model_file
from bodhi_trio._config._hub_refs import PullRequest
from bodhi_trio._context._spec import default_spec_builder
from bodhi_trio._exceptions import AliasNotFoundError, BodhiError, InvalidRequestError
from bodhi_trio._http._ollama._pull import is_hub_ref
from bodhi_trio._http._ollama._responses import rfc3339
from bodhi_trio._http._request_scope import note_request
from bodhi_trio._llama._gguf_header import read_gguf_metadata
from bodhi_trio._llama._gguf_types import FILE_TYPES
from bodhi_trio._llama._memory import estimate_model_memory

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._context._open import SharedContext
    from bodhi_trio._core._state import ModelState
    from bodhi_trio._llama._gguf_header import GGUFValue

__all__ = [
    "ModelFacts",
    "listed_name",
    "model_facts",
    "ps_entry",
    "resolve_model",
    "show_answer",
    "tags_entry",
]

_LATEST = ":latest"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Ollama shows a model kept forever as expiring in ~292 years (the largest Go duration).
_FOREVER = datetime.timedelta(microseconds=(2**63 - 1) // 1000)
_THINKING_MARKERS = ("<think>", "enable_thinking", "reasoning_content")


def listed_name(alias: str) -> str:
    """How ``/api/tags`` and ``/api/ps`` name an alias: with a tag, ``:latest`` if none."""
    return alias if ":" in alias else alias + _LATEST


def resolve_model(ctx: SharedContext, name: str) -> Alias:
    """The alias an Ollama model name means: ``foo`` and ``foo:latest`` alike; and a
    Hugging Face name ``hf.co/REPO[:QUANT]`` the alias its pull writes
    (``PullRequest.from_ref(name).alias_name``, e.g. ``tiny:q4_k_m``) if that alias
    is of that repo.

    Raises:
        AliasNotFoundError: None of these is an alias.
        InvalidAliasError: Its file is broken.
    """
    candidates = [name]
    if name.endswith(_LATEST):
        candidates.append(name.removesuffix(_LATEST))
    elif ":" not in name:
        candidates.append(name + _LATEST)
    for candidate in candidates:
        try:
            alias = ctx.resolve_alias(candidate)
        except AliasNotFoundError:
            continue
        note_request(alias=alias.alias)  # the metrics' label (an alias that exists)
        return alias
    pulled = _pulled_alias(ctx, name)
    if pulled is None:
        raise AliasNotFoundError(name)
    note_request(alias=pulled.alias)
    return pulled


def _pulled_alias(ctx: SharedContext, name: str) -> Alias | None:
    """The alias ``/api/pull`` of ``name`` wrote, if ``name`` is ``hf.co/...`` and the
    alias of that name is of the same repo (another repo's model is not this one)."""
    if not is_hub_ref(name):
        return None
    try:
        request = PullRequest.from_ref(name)
        alias = ctx.resolve_alias(request.alias_name)
    except (AliasNotFoundError, InvalidRequestError):
        return None
    return alias if alias.repo.lower() == request.repo.lower() else None


@attrs.frozen
class ModelFacts:
    """One alias as the model routes describe it (see the module docstring)."""

    alias: Alias
    modified: float
    size: int = 0
    digest: str | None = None
    metadata: Mapping[str, GGUFValue] = attrs.field(factory=dict)
    path: Path | None = None

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""

    @property
    def template(self) -> str:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else ""

    def details(self) -> dict[str, Any]:
        arch = self.architecture
        count = self.metadata.get("general.parameter_count")
        file_type = self.metadata.get("general.file_type")
        return {
            "parent_model": "",
            "format": "remote" if self.alias.remote is not None else "gguf",
            "family": arch,
            "families": [arch] if arch else [],
            "parameter_size": _human_number(count) if isinstance(count, int) else "",
            "quantization_level": _quantization(file_type),
        }

    def capabilities(self) -> list[str]:
        """As Ollama decides them: a pooling type makes an embedding model."""
        if f"{self.architecture}.pooling_type" in self.metadata:
            return ["embedding"]
        found = ["completion"]
        template = self.template
        if "tools" in template:
            found.append("tools")
        if any(marker in template for marker in _THINKING_MARKERS):
            found.append("thinking")
        return found


def _human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber``: ``8.2B``, ``135M``, ``7B``."""
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= size:
            number = count / size
            digits = 0 if number == math.floor(number) else 1
            return f"{number:.{digits}f}{suffix}"
    return str(count)


def _quantization(file_type: object) -> str:
    if not isinstance(file_type, int) or isinstance(file_type, bool):
        return ""
    name = FILE_TYPES.get(file_type, "")
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def model_facts(ctx: SharedContext, alias: Alias) -> ModelFacts:
    """What is known of ``alias``'s model; a missing or unreadable file leaves the facts
    it holds out. Blocking (stat calls and a GGUF header read): run it in a thread."""
    try:
        modified = ctx.aliases.path_for(alias.alias).stat().st_mtime
    except OSError:
        modified = 0.0
    if alias.remote is not None:
        return ModelFacts(alias, modified)  # its server holds the model: no file here
    try:
        path = resolve_model_file(
            ctx.settings.hub_cache, alias.repo, alias.filename, alias.snapshot
        )
        size = path.stat().st_size
        blob = path.resolve().name
        metadata = read_gguf_metadata(path)
    except (BodhiError, OSError, ValueError):  # GGUFHeaderError, a repo id HF refuses
        return ModelFacts(alias, modified)
    digest = blob if _SHA256.fullmatch(blob) else None
    return ModelFacts(alias, modified, size, digest, metadata, path)


def context_length(ctx: SharedContext, facts: ModelFacts) -> int | None:
    """The context llama-server allocates for the alias (its ``--ctx-size``, else the
    model's own). Blocking: run it in a thread."""
    if facts.alias.remote is not None:
        return None
    try:
        spec = default_spec_builder(ctx.settings)(facts.alias, ctx.exec_variant)
        return estimate_model_memory(spec.model, spec.server_args).n_ctx
    except (BodhiError, OSError, ValueError):
        return None


def tags_entry(facts: ModelFacts) -> dict[str, Any]:
    """One model of ``GET /api/tags``."""
    name = listed_name(facts.alias.alias)
    entry: dict[str, Any] = {
        "name": name,
        "model": name,
        "modified_at": rfc3339(facts.modified),
        "size": facts.size,
    }
    if facts.digest is not None:
        entry["digest"] = facts.digest
    entry["details"] = facts.details()
    return entry


def ps_entry(
    facts: ModelFacts, state: ModelState, context: int | None, *, cpu: bool, now: float
) -> tuple[float, dict[str, Any]]:
    """One model of ``GET /api/ps``, and its expiry time (to sort by, latest first)."""
    keep_alive = state.keep_alive if state.keep_alive is not None else 0.0
    if keep_alive < 0:
        expires = (datetime.datetime.now(datetime.UTC) + _FOREVER).timestamp()
    elif state.expires_at is not None:
        expires = state.expires_at  # idle: its unload is due then
    else:
        expires = now + keep_alive  # busy or loading: counts from its end
    size = state.memory or 0
    name = listed_name(state.alias)
    entry: dict[str, Any] = {"name": name, "model": name, "size": size}
    if facts.digest is not None:
        entry["digest"] = facts.digest
    entry.update(
        details=facts.details(),
        expires_at=rfc3339(expires),
        size_vram=0 if cpu else size,
    )
    if context is not None:
        entry["context_length"] = context
    return expires, entry


def _info_value(value: GGUFValue) -> Any:
    return list(value) if isinstance(value, tuple) else value


def show_answer(facts: ModelFacts, *, verbose: bool) -> dict[str, Any]:
    """``POST /api/show``: ``model_info`` holds the GGUF metadata (architecture,
    ``<arch>.context_length``, ``general.parameter_count`` when the file has it); arrays
    only when ``verbose``; the chat template is ``template``."""
    info: dict[str, Any] = {
        key: _info_value(value)
        for key, value in facts.metadata.items()
        if key != "tokenizer.chat_template" and (verbose or not isinstance(value, tuple))
    }
    alias = facts.alias
    params = alias.request_params.to_dict()
    parameters = "\n".join(
        f"{key} {json.dumps(value)}"
        for key, values in params.items()
        for value in (values if isinstance(values, list | tuple) else [values])
    )
    if alias.remote is not None:
        source = f"{alias.remote.base_url} (remote model {alias.remote.model or alias.alias})"
    else:
        source = f"hf.co/{alias.repo}/{alias.filename} (snapshot {alias.snapshot})"
    modelfile = f"# bodhi-trio alias {alias.alias}\nFROM {source}\n" + "".join(
        f"# llama-server {arg}\n" for arg in alias.context_params
    )
    return {
        "modelfile": modelfile,
        "parameters": parameters,
        "template": facts.template,
        "details": facts.details(),
        "model_info": info,
        "capabilities": facts.capabilities(),
        "modified_at": rfc3339(facts.modified),
    }
