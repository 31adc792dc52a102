"""resid_pre sweeps start each patched row at its own layer: same numbers, fewer block rows."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
import workbench.patching as patching
from tests.conftest import track
from tests.tiny import tiny_checkpoint
from workbench import Add, Site
from workbench.engines.tl_patching import can_enter_mid_stack, run_entering
from workbench.patching import LogitDiff, activation_patching
from workbench.subject import Tokens


def _fresh_corruption(subj, texts, seed=0):
    """Left-padded clean prompts and a corruption with new tokens at every real position."""
    t = subj.tokenize(texts)
    g = torch.Generator().manual_seed(seed)
    ids, real = t.input_ids.clone(), t.attention_mask.bool()
    ids[real] = torch.randint(4, 60, (int(real.sum()),), generator=g)
    assert t.attention_mask.min() == 0  # the prompts have different lengths: padding is exercised
    return t, Tokens(ids, t.attention_mask)


def _block_rows(subj):
    """Rows each block's input hook saw, per layer (torch hooks removed by the caller)."""
    seen = {i: 0 for i in range(subj.arch.n_layers)}
    handles = [b.hook_in.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, seen[i] + out.shape[0]))
               for i, b in enumerate(subj.engine.bridge.blocks)]
    return seen, handles


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "mixtral", "qwen2"])
def test_staged_sweep_equals_full_forwards(family, monkeypatch):
    subj = track(wb.load(tiny_checkpoint(family)))
    assert can_enter_mid_stack(subj)
    clean, corrupt = _fresh_corruption(subj, ["the cat is in the box", "a dog", "paris is in france and the sun"])
    metric = LogitDiff(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    seen, handles = _block_rows(subj)
    try:
        staged = activation_patching(subj, clean, corrupt, metric, max_rows=12)
    finally:
        for h in handles:
            h.remove()
    monkeypatch.setattr(patching, "can_enter_mid_stack", lambda s: False)
    full = activation_patching(subj, clean, corrupt, metric, max_rows=12)
    torch.testing.assert_close(staged.values, full.values, atol=1e-6, rtol=1e-5)
    assert full.effect.abs().max() > 1e-3
    # Rows patched at layer L never pass through blocks below L (2 caching runs of 3 rows each).
    per_layer = staged.n_cells_run // subj.arch.n_layers * 3
    assert seen == {i: 2 * 3 + per_layer * (i + 1) for i in range(subj.arch.n_layers)}


def test_active_interventions_use_full_forwards(monkeypatch):
    subj = track(wb.load(tiny_checkpoint("llama")))
    clean, corrupt = _fresh_corruption(subj, ["the cat is in the box", "a dog"])
    metric = LogitDiff(torch.tensor([5, 6]), torch.tensor([8, 9]))
    add = Add(Site(0, "resid_pre"), torch.full((subj.arch.d_model,), 0.5))
    with subj.intervene(add):
        assert not can_enter_mid_stack(subj)
        with_iv = activation_patching(subj, clean, corrupt, metric)
    without = activation_patching(subj, clean, corrupt, metric)
    assert (with_iv.values - without.values).abs().max() > 1e-4  # the intervention is applied once, not lost


def test_run_entering_checks_its_entries():
    subj = track(wb.load(tiny_checkpoint("llama")))
    ids = torch.ones(2, 3, dtype=torch.long)
    x = torch.zeros(1, 3, subj.arch.d_model)
    with pytest.raises(ValueError, match="increasing"):
        run_entering(subj, ids, torch.ones_like(ids), [(1, x), (0, x)])
    with pytest.raises(ValueError, match="rows"):
        run_entering(subj, ids, torch.ones_like(ids), [(0, x)])
