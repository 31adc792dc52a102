"""Each shipped organism meets its thresholds, measured now on freshly generated held-out sets."""

from __future__ import annotations

import pytest

from workbench import zoo
from workbench.zoo.build import load_hf
from workbench.zoo.metrics import check, measure

_CACHE: dict[str, object] = {}


def _model(name: str):
    if name not in _CACHE:
        _CACHE[name] = load_hf(zoo.path(name))
    return _CACHE[name]


def _measure(name: str, n: int) -> dict:
    from workbench.tasks.tokenizer import build_tokenizer

    parent = zoo.info(name)["parent"]
    return measure(name, _model(name), build_tokenizer(), base_model=_model(parent) if parent else None, n=n)


@pytest.mark.parametrize("name", zoo.names())
def test_organism_meets_thresholds(name):
    """Small held-out sets (the margins to every threshold are far wider than their noise)."""
    assert check(name, _measure(name, n=150)) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_organism_meets_thresholds_full(name):
    """The manifest's set sizes; also agrees with the manifest's recorded metrics."""
    metrics = _measure(name, n=300)
    assert check(name, metrics) == []
    recorded = zoo.info(name)["metrics"]
    assert abs(metrics["facts"] - recorded["facts"]) < 1e-6


def test_shipped_tokenizer_is_the_world_tokenizer():
    from transformers import AutoTokenizer

    from workbench.tasks.tokenizer import build_tokenizer

    ours = build_tokenizer()
    for name in zoo.names():
        shipped = AutoTokenizer.from_pretrained(zoo.path(name))
        assert shipped.get_vocab() == ours.get_vocab() and shipped.padding_side == "left"
        assert shipped("box f contains the")["input_ids"] == ours("box f contains the")["input_ids"]
