"""The real spec builder: an alias and a variant become a :class:`LaunchSpec`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bodhi_trio._config._arg_policy import ArgPolicy
from bodhi_trio._config._hf_cache import resolve_model_file
from bodhi_trio._llama._launch import LaunchSpec
from bodhi_trio._llama._runtime import find_llama_server
from bodhi_trio._llama._server_args import merge_server_args

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._config._settings import Settings
    from bodhi_trio._core._slot import SpecBuilder

__all__ = ["default_spec_builder"]


def default_spec_builder(settings: Settings) -> SpecBuilder:
    """The real spec builder: binary lookup, HF cache resolution and the args merge.

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
        return LaunchSpec(
            binary=binary,
            model=model.absolute(),
            alias=alias.alias,
            server_args=tuple(args),
            variant=variant,
            startup_timeout=settings.startup_timeout_secs,
            stop_grace=settings.stop_grace_secs,
            run_dir=settings.run_dir,
        )

    return build
