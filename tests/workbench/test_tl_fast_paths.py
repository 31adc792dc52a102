"""The TL engine's shortcuts around bridge overhead change no numbers and leave no hooks behind."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import tiny_checkpoint
from workbench import Site, load

TEXTS = ["the apple is in box one", "a big red dog", "two cats"]


def _norm_bridges(s):
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    return [m for m in s.hf_model.modules() if isinstance(m, NormalizationBridge)]


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_norm_shortcut_is_the_bridge_path_bit_for_bit(family):
    """With a read-only hook on every `hook_scale` the bridge's own method runs: same logits."""
    s = load(tiny_checkpoint(family), engine="tl")
    norms = _norm_bridges(s)
    assert norms and all("_hf_autograd_forward_with_hooks" in m.__dict__ for m in norms)
    fast = s.forward(TEXTS)
    fired = []
    handles = [m.hook_scale.register_forward_hook(lambda mod, i, o: fired.append(1)) for m in norms]
    try:
        stock = s.forward(TEXTS)
    finally:
        for h in handles:
            h.remove()
    assert fired and torch.equal(fast, stock)


def test_an_editing_norm_hook_still_takes_effect():
    s = load(tiny_checkpoint("llama"), engine="tl")
    base = s.forward(TEXTS)
    m = _norm_bridges(s)[0]
    def double(mod, i, o: torch.Tensor) -> torch.Tensor:
        return o * 2

    h = m.hook_normalized.register_forward_hook(double)
    try:
        with pytest.warns(UserWarning):
            edited = s.forward(TEXTS)
    finally:
        h.remove()
    assert not torch.equal(edited, base)
    assert torch.equal(s.forward(TEXTS), base)


def test_cached_hook_resolution_adds_and_removes_like_bridge_hooks():
    s = load(tiny_checkpoint("llama"), engine="tl")
    b = s.engine.bridge
    sites = s.sites("resid_post") + s.sites("attn_out")
    level = getattr(b, "context_level", 0)
    _, a = s.run(TEXTS, cache=sites)
    _, again = s.run(TEXTS, cache=sites)  # names now resolved from the cache
    assert all(torch.equal(a[x], again[x]) for x in sites)
    points = [s.engine._point(x.tl_name)[1] for x in sites]
    assert not any(p.fwd_hooks for p in points) and getattr(b, "context_level", 0) == level

    def boom(x):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        s.run(TEXTS, hooks=[(Site(1, "resid_post"), boom)])
    assert not any(p.fwd_hooks for p in points) and getattr(b, "context_level", 0) == level
    with pytest.raises(KeyError):
        s.engine._point("blocks.0.hook_no_such_point")


def test_block_kwarg_filter_matches_the_bridge():
    from transformer_lens.model_bridge.generalized_components.block import BlockBridge

    s = load(tiny_checkpoint("llama"), engine="tl")
    blocks = [m for m in s.hf_model.modules() if isinstance(m, BlockBridge)]
    assert blocks
    kw = {"attention_mask": 1, "position_ids": 2, "encoder_attention_mask": 3, "hidden_states": 4, "cache": 5}
    for m in blocks:
        for n in (0, 1):
            assert m._filter_kwargs_for_forward(dict(kw), n) == BlockBridge._filter_kwargs_for_forward(m, dict(kw), n)
