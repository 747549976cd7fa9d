"""The replica pool of each remote alias in use (:mod:`._replicas`), made on first use.

A pool's health probes run in the context's root nursery. A pool is remade when its
alias's ``remote:`` block changed, and forgotten, its probes ended, once its alias no
longer names it (deleted, broken or changed): a deleted alias's URLs and key are
contacted no more.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, final

from bodhi_trio._context._replicas import ReplicaPool, ReplicaStatistics
from bodhi_trio._exceptions import BodhiError

if TYPE_CHECKING:
    import trio

    from bodhi_trio._config._alias_store import AliasStore
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._transport._remote import RemoteClients

__all__ = ["ReplicaPools"]


@final
class ReplicaPools:
    """The pools of the remote aliases in use.

    Args:
        aliases: Where each pool's alias is looked up again.
        remotes: The HTTP clients the pools send with.
        key_envs: ``BODHI_REMOTE_KEY_ENVS``: the variables an alias may name its key in.
        nursery: Where the pools' probes run (the context's root nursery).
    """

    def __init__(
        self,
        aliases: AliasStore,
        remotes: RemoteClients,
        key_envs: frozenset[str],
        nursery: trio.Nursery,
    ) -> None:
        self._aliases = aliases
        self._remotes = remotes
        self._key_envs = key_envs
        self._nursery = nursery
        self._pools: dict[str, ReplicaPool] = {}

    def pool_for(self, alias: Alias) -> ReplicaPool:
        """The replica pool of remote ``alias`` (made on first use, its health probes then
        started; remade when the alias's ``remote:`` block changed)."""
        assert alias.remote is not None
        pool = self._pools.get(alias.alias)
        if pool is None or pool.spec != alias.remote:
            if pool is not None:
                pool.probes.cancel()
            pool = ReplicaPool(alias.alias, alias.remote, self._remotes, key_envs=self._key_envs)
            self._pools[alias.alias] = pool
            self._nursery.start_soon(
                pool.serve_probes, partial(self._current, pool), name=f"probes:{alias.alias}"
            )
        return pool

    def statistics(self) -> dict[str, list[ReplicaStatistics]]:
        """Each remote alias in use: its replicas' load and health (a pool whose alias was
        deleted or changed since is forgotten here)."""
        pools = list(self._pools.items())
        return {name: pool.statistics() for name, pool in pools if self._current(pool)}

    def _current(self, pool: ReplicaPool) -> bool:
        """Whether ``pool``'s alias still names its remote; if not, it is forgotten and its
        probes end."""
        try:
            current = self._aliases.get(pool.alias).remote == pool.spec
        except BodhiError:  # deleted, or its file broke
            current = False
        if not current:
            pool.probes.cancel()
            if self._pools.get(pool.alias) is pool:
                del self._pools[pool.alias]
        return current
