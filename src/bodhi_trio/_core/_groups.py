"""Exception groups at the edges of our nurseries: hand back what a task raised, as raised."""

from __future__ import annotations

from typing import NoReturn

__all__ = ["reraise_unwrapped", "sole_exception"]


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in ``group`` (nested groups flattened), or ``None`` if several."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    return leaves[0] if len(leaves) == 1 else None


def reraise_unwrapped(error: BaseException) -> NoReturn:
    """Raise ``error`` as it was raised.

    ``raise error`` inside ``except`` would set its ``__context__`` to the group
    being handled, hiding the exception ``error`` itself arose from (and ``raise
    error from x`` would suppress it): the original context is put back.
    """
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error, context
