"""Where an HTTP peer of ours listens: a Unix socket (our children) or host and port.

llama-server children listen on a Unix socket in a private directory (mode
0700), never on a TCP port: no other local user can reach them, no web page can
(browsers cannot open Unix sockets, and there is no port to scan), and the
``Host``/``Origin`` tricks that work on a loopback port have nothing to aim at.
TCP addresses remain for our own clients of TCP servers (tests, the harness).
"""

from __future__ import annotations

import attrs
import trio

__all__ = ["Address"]

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_UNIX_PATH_BYTES = 107


@attrs.frozen
class Address:
    """One HTTP server's address.

    Attributes:
        unix_socket: The socket's path, for a Unix-socket server; else ``None``.
        host: The TCP host, when ``unix_socket`` is ``None``.
        port: The TCP port, when ``unix_socket`` is ``None``.
    """

    unix_socket: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    @classmethod
    def unix(cls, path: str) -> Address:
        """A Unix-socket server at ``path``."""
        return cls(unix_socket=path)

    @classmethod
    def tcp(cls, host: str, port: int) -> Address:
        """A TCP server at ``host:port``."""
        return cls(host=host, port=port)

    @property
    def host_header(self) -> str:
        """The ``Host`` header value for requests to it."""
        if self.unix_socket is not None:
            return "localhost"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def connect(self) -> trio.SocketStream:
        """Open a stream to it.

        Raises:
            OSError: Nothing listens there.

        Cancellation: safe; a half-open socket is closed.
        """
        if self.unix_socket is not None:
            return await trio.open_unix_socket(self.unix_socket)
        return await trio.open_tcp_stream(self.host, self.port)

    def __str__(self) -> str:
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return self.host_header
