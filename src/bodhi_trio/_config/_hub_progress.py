"""The progress bar ``huggingface_hub`` draws, replaced by a count of a file's bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["byte_counting_bar"]


def byte_counting_bar(on_update: Callable[[int], None]) -> type:
    """A stand-in for the library's ``tqdm_class``: it reports the file's byte count.

    Having ``update_transfer`` makes the library use one bar per file also for Xet
    downloads (the written bytes), and ignore-able network-byte updates.
    """

    class _Bar:
        def __init__(self, *args: object, **kwargs: Any) -> None:
            self.n: int = int(kwargs.get("initial") or 0)
            self.total: int | None = kwargs.get("total")
            self.format_dict: dict[str, object] = {}
            on_update(self.n)

        def update(self, n: int | float = 1) -> None:
            self.n += int(n)
            on_update(self.n)

        def update_transfer(self, n: int | float = 1) -> None:
            pass

        def set_postfix_str(self, *args: object, **kwargs: object) -> None:
            pass

        def set_transfer_postfix_str(self, *args: object, **kwargs: object) -> None:
            pass

        def refresh(self) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return _Bar
