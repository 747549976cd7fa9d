"""The RPC settings: workers bodhi-trio starts, and RPC servers aliases may name.

* ``BODHI_RPC_WORKERS``: ``host:port`` of each ``rpc-server`` the server starts
  and supervises. rpc-server binds IPv4 addresses only (``localhost`` is read as
  127.0.0.1). A worker that binds beyond loopback is refused unless
  ``BODHI_RPC_WORKERS_INSECURE`` is true: RPC has no authentication, so anyone
  who reaches the port can run computations on it and read what llama-server
  sent it (weights and the activations of prompts).
* ``BODHI_ALLOWED_RPC_SERVERS``: ``host:port`` of workers elsewhere that an
  alias's ``--rpc`` may name (loopback ones and the workers above need no entry;
  see :mod:`._arg_policy`).
"""

from __future__ import annotations

from bodhi_trio._config._setting_values import as_list
from bodhi_trio._exceptions import SettingsError
from bodhi_trio._llama._rpc_endpoints import RpcEndpoint, bind_address, parse_rpc_endpoint

__all__ = ["check_rpc_workers_bind", "rpc_servers_setting", "rpc_workers_setting"]

_EXAMPLE = "host:port, e.g. 127.0.0.1:50052"


def rpc_servers_setting(key: str, value: object, source: str) -> tuple[RpcEndpoint, ...]:
    """A list of ``host:port`` (a comma list or a YAML list).

    Raises:
        SettingsError: An entry is not a ``host:port`` llama.cpp can use.
    """
    endpoints: list[RpcEndpoint] = []
    for item in as_list(key, value, source):
        try:
            endpoints.append(parse_rpc_endpoint(item))
        except ValueError as exc:
            raise SettingsError(
                f"{key} from {source}: {item!r} {exc}; every entry is {_EXAMPLE}", param=key
            ) from None
    return tuple(endpoints)


def rpc_workers_setting(key: str, value: object, source: str) -> tuple[RpcEndpoint, ...]:
    """``BODHI_RPC_WORKERS``: endpoints rpc-server can bind, each on a port of its own.

    Raises:
        SettingsError: An entry is not ``host:port``, its host is a name (rpc-server
            binds addresses only), or two entries share a port (two workers cannot
            both listen there, and each worker's log file is named by its port).
    """
    workers: list[RpcEndpoint] = []
    for endpoint in rpc_servers_setting(key, value, source):
        try:
            workers.append(RpcEndpoint(bind_address(endpoint), endpoint.port))
        except ValueError as exc:
            raise SettingsError(f"{key} from {source}: {exc}", param=key) from None
        if any(other.port == endpoint.port for other in workers[:-1]):
            raise SettingsError(
                f"{key} from {source}: port {endpoint.port} is listed twice", param=key
            )
    return tuple(workers)


def check_rpc_workers_bind(workers: tuple[RpcEndpoint, ...], *, insecure: bool) -> None:
    """Refuse a worker beyond loopback unless ``BODHI_RPC_WORKERS_INSECURE`` allows it.

    Raises:
        SettingsError: A worker would bind a non-loopback address.
    """
    if insecure:
        return
    for worker in workers:
        if not worker.is_loopback:
            raise SettingsError(
                f"BODHI_RPC_WORKERS: {str(worker)!r} binds beyond this machine; llama.cpp's RPC"
                " has no authentication, so anyone who reaches that port can use the worker"
                " and read what llama-server sends it. Bind 127.0.0.1, or set"
                " BODHI_RPC_WORKERS_INSECURE=true on a network you trust",
                param="BODHI_RPC_WORKERS",
            )
