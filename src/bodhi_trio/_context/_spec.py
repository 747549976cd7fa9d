"""What the context knows of a model before it starts: its :class:`LaunchSpec` (the
real spec builder), its memory estimate, the scheduler's limits from the settings, and
which exec variants it can run.

Embeddings work on every alias without hand-added flags: the spec builder adds
``--embeddings`` to the merged args, and ``--pooling mean`` when the GGUF declares
no pooling type of its own (``<arch>.pooling_type`` absent or ``none``: a generative
model; an embedding model keeps its own). A pooling type in the args (any tier, any
spelling) is kept, and ``--pooling none`` is the way out: no embeddings, and none of
their cost (see docs/configuration.md).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio

from bodhi_trio._config._arg_policy import ArgPolicy
from bodhi_trio._config._hf_cache import resolve_model_file
from bodhi_trio._config._settings import VARIANT_NAME
from bodhi_trio._core._scheduler import Limits
from bodhi_trio._exceptions import InvalidRequestError, LlamaServerNotFoundError
from bodhi_trio._llama._gguf_header import read_gguf_metadata
from bodhi_trio._llama._launch import LaunchSpec
from bodhi_trio._llama._memory import estimate_model_memory
from bodhi_trio._llama._runtime import find_llama_server
from bodhi_trio._llama._server_args import canonical_flag, is_flag, merge_server_args

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._config._settings import Settings
    from bodhi_trio._core._slot import SpecBuilder
    from bodhi_trio._llama._rpc_endpoints import RpcEndpoint

__all__ = [
    "ESTIMATE_TIMEOUT",
    "default_spec_builder",
    "embedding_args",
    "estimate_from_gguf",
    "limits_from",
    "model_pooling",
    "runnable_variant",
]

logger = logging.getLogger("bodhi_trio.models")

_POOLING_NONE = 0  # llama.cpp's LLAMA_POOLING_TYPE_NONE
ESTIMATE_TIMEOUT = 30.0
"""Seconds a model's memory estimate may take to read its GGUF header."""


def default_spec_builder(settings: Settings) -> SpecBuilder:
    """The real spec builder: binary lookup, HF cache resolution, the args merge, and
    the embeddings flags (:func:`embedding_args`).

    Every tier of args passes the :class:`ArgPolicy` again right before the merge,
    although settings and the alias store checked them already: an alias built in
    code, or a symlink that changed since, must not reach a child either.
    """
    policy = ArgPolicy.from_settings(settings)

    def build(alias: Alias, variant: str) -> LaunchSpec:
        binary = find_llama_server(variant, settings.binary_for(variant))
        model = resolve_model_file(settings.hub_cache, alias.repo, alias.filename, alias.snapshot)
        tiers = (settings.llamacpp_args, settings.server_args_for(variant), alias.context_params)
        sources = (
            "BODHI_LLAMACPP_ARGS",
            f"BODHI_LLAMACPP_ARGS_{variant.upper()}",
            f"alias {alias.alias!r} context_params",
        )
        for items, source in zip(tiers, sources, strict=True):
            policy.check(items, source=source)
        args = merge_server_args(*tiers, sources=sources)
        args += embedding_args(args, model.absolute())
        return LaunchSpec(
            binary=binary,
            model=model.absolute(),
            alias=alias.alias,
            server_args=tuple(args),
            variant=variant,
            startup_timeout=settings.startup_timeout_secs,
            stop_grace=settings.stop_grace_secs,
            run_dir=settings.run_dir,
            env=settings.child_base_environment(),
        )

    return build


def embedding_args(args: Sequence[str], model: Path) -> list[str]:
    """The flags to add to merged ``args`` so that ``/v1/embeddings`` works.

    Returns:
        ``[]`` if ``args`` turn embeddings on already, or say ``--pooling none``;
        ``--embeddings`` alone if they choose another pooling type; else
        ``--embeddings``, plus ``--pooling mean`` when the model declares no pooling
        type (a file whose header cannot be read gets only ``--embeddings``; its start
        will say what is wrong with it).
    """
    flags = [canonical_flag(token) if is_flag(token) else token for token in args]
    if "--embedding" in flags or "--rerank" in flags:  # canonical: --embeddings, --reranking
        return []
    if "--pooling" in flags:
        at = len(flags) - 1 - flags[::-1].index("--pooling")  # the last one wins
        chosen = flags[at + 1] if at + 1 < len(flags) else ""
        return [] if chosen == "none" else ["--embeddings"]
    try:
        pooling = model_pooling(model)
    except (OSError, ValueError):
        return ["--embeddings"]
    if pooling is None or pooling == _POOLING_NONE:
        return ["--embeddings", "--pooling", "mean"]
    return ["--embeddings"]


def model_pooling(model: Path) -> int | None:
    """The pooling type the GGUF declares (``<arch>.pooling_type``), or ``None``.

    Read once per file version (path, size, modification time): the header read
    runs in the load task, and it takes milliseconds, tens of them for a large
    vocabulary, so a model that loads again costs nothing.

    Raises:
        OSError: The file cannot be read.
        GGUFHeaderError: Not a GGUF file this reader understands.
    """
    stat = model.stat()
    return _pooling(model, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _pooling(model: Path, _size: int, _mtime_ns: int) -> int | None:
    metadata = read_gguf_metadata(model)
    value = metadata.get(f"{metadata.get('general.architecture')}.pooling_type")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def estimate_from_gguf(
    spec: LaunchSpec, *, workers_here: Sequence[RpcEndpoint] = ()
) -> int | None:
    """A model's memory on this machine before it loads, from its GGUF header (in a
    worker thread: the header read takes milliseconds); ``None`` if the file cannot be
    read as GGUF (the start will then say why) or not within :data:`ESTIMATE_TIMEOUT`
    (a hung mount: the start's own stall timeout then ends the load). What RPC workers
    on other machines will hold is not counted; ``workers_here`` are this machine's
    (``BODHI_RPC_WORKERS``), as loopback ones are.

    Cancellation: the thread is let go (it ends with its read); nothing to clean up.
    """

    def estimate() -> int | None:
        try:
            return estimate_model_memory(
                spec.model, spec.server_args, workers_here=workers_here
            ).here
        except (OSError, ValueError, ArithmeticError):  # a header's numbers, whatever they are
            return None

    with trio.move_on_after(ESTIMATE_TIMEOUT):
        return await trio.to_thread.run_sync(estimate, abandon_on_cancel=True)
    logger.warning(
        "reading the header of %s took over %g s: no estimate", spec.model, ESTIMATE_TIMEOUT
    )
    return None


def runnable_variant(settings: Settings, variant: str) -> str:
    """``variant`` (a client's input) stripped and lower-cased, if it names a binary.

    Raises:
        InvalidRequestError: Not a variant name, or no binary for it (``param``
            ``variant``; a long name is cut short in the message).
    """
    given, variant = variant, variant.strip().lower()
    if not VARIANT_NAME.fullmatch(variant):
        shown = repr(given)  # as the client wrote it
        if len(given) > 64:  # the message is the client's own input: keep it short
            shown = f"{given[:20]!r}... ({len(given)} characters)"
        raise InvalidRequestError(
            f"invalid variant {shown}: a variant name is 1 to 64 letters, digits and '_'",
            param="variant",
        )
    try:
        find_llama_server(variant, settings.binary_for(variant))
    except LlamaServerNotFoundError as exc:  # the request names a variant we cannot run
        raise InvalidRequestError(exc.message, param="variant") from exc
    return variant


def limits_from(settings: Settings, variant: str | None = None) -> Limits:
    """The scheduler's numbers from the settings, for ``variant`` (the exec variant of the
    settings if not given: unset, the memory budget is 80% for ``cpu``, none for others)."""
    return Limits(
        max_loaded=settings.max_loaded_models,
        max_queue=settings.max_queue,
        memory_budget=settings.memory_budget_bytes(variant),
        drain_timeout=settings.drain_timeout_secs,
        keep_alive=settings.keep_alive_secs,
        upstream_idle_timeout=settings.upstream_idle_timeout_secs,
    )
