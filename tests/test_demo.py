"""`make demo` is the README's first promise: it must end by agreeing with itself."""

from __future__ import annotations

import pytest

from tokenquota import demo


def test_the_tour_rebuilds_to_the_same_usage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # the narrowest terminal we promise whole numbers on
    demo.main()
    out = capsys.readouterr().out
    assert "replayed=True" in out
    assert "rebuilt every counter from the ledger (2 events): the same usage" in out
    assert "DIFFERENT" not in out
    for number in ("1,000,000", "998,410", "50,000", "48,410", "1,590"):
        assert number in out
