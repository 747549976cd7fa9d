"""The public surface is exactly what __init__ says, and nothing private leaks."""

from __future__ import annotations

import bodhi_trio


def test_all_names_exist_and_are_public() -> None:
    for name in bodhi_trio.__all__:
        assert hasattr(bodhi_trio, name), name
        assert not name.startswith("_")
    assert len(set(bodhi_trio.__all__)) == len(bodhi_trio.__all__)


def test_public_classes_report_the_public_module() -> None:
    assert bodhi_trio.SharedContext.__module__ == "bodhi_trio"
    assert bodhi_trio.open_context.__module__ == "bodhi_trio"
    assert repr(bodhi_trio.SlotStatus.READY).startswith("<SlotStatus")


def test_every_error_is_a_bodhi_error_with_a_status() -> None:
    errors = [getattr(bodhi_trio, n) for n in bodhi_trio.__all__ if n.endswith("Error")]
    assert len(errors) >= 18
    for error in errors:
        assert issubclass(error, bodhi_trio.BodhiError)
        assert 400 <= error.status < 600
