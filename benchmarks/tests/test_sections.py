"""Every section `make bench` runs imports and has the entry point the runner calls.

A section whose imports rot (a name moved in the code it measures) fails here, in `make test`,
instead of at the end of a long `make bench`.
"""

from __future__ import annotations

import importlib

import pytest

from benchmarks.__main__ import SECTIONS


@pytest.mark.parametrize("name", SECTIONS)
def test_every_section_imports_and_has_main(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.main), f"benchmarks.{name} has no main(out_json)"


def test_scale_only_picks_the_named_rows_and_names_an_unknown_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import scale

    monkeypatch.setenv("SCALE_ONLY", "train_at_sizes,compaction")
    assert [fn.__name__ for fn in scale.selected()] == ["train_at_sizes", "compaction"]
    monkeypatch.setenv("SCALE_ONLY", "train_at_size")
    with pytest.raises(ValueError, match="SCALE_ONLY names train_at_size, not a scale row"):
        scale.selected()
    monkeypatch.delenv("SCALE_ONLY")
    assert scale.selected() == scale.ROW_FUNCTIONS
