"""Graft: the tuned values of the most changed entries, as an Edit; recovered metric vs a random control."""

from __future__ import annotations

import math

import pytest
import torch

from edits.base import Edit
from edits.graft import Graft, graft_curve
from tests.tiny import tiny_subject
from workbench import ModelPair
from workbench.diff import copy_subject, weight_diff

TEXTS = ["the apple is in box one", "where is paris ?", "the red dog is big"]


@pytest.fixture(scope="module")
def sparse_pair():
    """Tuned = base + a sparse delta (2 % of entries, planted in one MLP) + tiny dense noise."""
    s = tiny_subject("llama")
    t = copy_subject(s, name="sparse-tuned")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in t.params.items():
            p.add_(1e-4 * torch.randn(p.shape, generator=g))
        w = t.params["model.layers.1.mlp.down_proj.weight"]
        m = torch.rand(w.shape, generator=g) < 0.3
        w.add_(m * torch.randn(w.shape, generator=g))
    return ModelPair(s, t)


def _logprob(subj) -> float:
    x = subj.tokenize(TEXTS, padding_side="right")
    with torch.no_grad():
        lp = torch.log_softmax(subj.forward(x)[:, :-1].double(), -1).gather(-1, x.input_ids[:, 1:, None])[..., 0]
    return float((lp * x.attention_mask[:, 1:]).sum() / x.attention_mask[:, 1:].sum())


def test_fit_picks_the_largest_changes(sparse_pair):
    pair = sparse_pair
    edit = Graft.fit(pair, 0.01)
    total = sum(p.numel() for _, p in pair.base.params.items())
    assert edit.n_entries == math.ceil(0.01 * total)
    smallest = math.inf
    for j, name in enumerate(edit.names):
        idx = edit.index[edit.param == j]
        d = (pair.tuned.params[name] - pair.base.params[name]).detach().flatten()
        smallest = min(smallest, float(d[idx].abs().min()))
        assert torch.equal(edit.values[edit.param == j], pair.tuned.params[name].detach().flatten()[idx])
    assert smallest > 0
    # Every entry left out changed less than every entry grafted.
    for name in pair.base.params.names():
        d = (pair.tuned.params[name] - pair.base.params[name]).detach().flatten().abs()
        mask = torch.ones_like(d, dtype=torch.bool)
        if name in edit.names:
            mask[edit.index[edit.param == edit.names.index(name)]] = False
        if mask.any():
            assert float(d[mask].max()) <= smallest


def test_full_graft_is_the_tuned_model_and_reverts_exactly(sparse_pair):
    pair = sparse_pair
    x = pair.base.tokenize(TEXTS)
    ref_b, ref_t = pair.base.forward(x), pair.tuned.forward(x)
    edit = Graft.fit(pair, 1.0)
    with edit.applied(pair.base):
        assert torch.equal(pair.base.forward(x), ref_t)
        assert weight_diff(pair).n_changed == 0
    assert torch.equal(pair.base.forward(x), ref_b)


def test_touched_and_save_load(sparse_pair, tmp_path):
    pair = sparse_pair
    edit = Graft.fit(pair, 1e-3)
    assert edit.touched(pair.base) == sorted(edit.names)
    assert edit.names == ("model.layers.1.mlp.down_proj.weight",)  # the sparse delta lives there
    back = Edit.load(edit.save(tmp_path / "g"))
    assert back == edit and isinstance(back, Graft)
    other = copy_subject(pair.base)
    other._identity = "not-the-same"
    with pytest.raises(ValueError, match="made for model"):
        edit.apply(other)
    with pytest.raises(ValueError, match="fraction"):
        Graft.fit(pair, 0.0)
    with pytest.raises(ValueError, match="equal lengths"):
        Graft(names=("a",), param=torch.zeros(2, dtype=torch.long), index=torch.zeros(1, dtype=torch.long),
              values=torch.zeros(1))


def test_graft_curve_top_beats_random(sparse_pair):
    pair = sparse_pair
    curve = graft_curve(pair, _logprob, fractions=(1e-3, 1e-2), seeds=(0, 1, 2))
    s = curve.summary().set_index(["selection", "fraction"])
    assert curve.base_metric != curve.tuned_metric
    for f in (1e-3, 1e-2):
        top, rnd = s.loc[("top", f), "mean"], s.loc[("random", f), "mean"]
        assert top > rnd + 0.3, (f, top, rnd)
    assert s.loc[("random", 1e-2), "count"] == 3
    curve.plot()
    print(curve.summary().to_string())
