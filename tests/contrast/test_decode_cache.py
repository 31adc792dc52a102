"""The decoding loops' preallocated KV cache gives the stock HF cache's numbers exactly."""

from __future__ import annotations

import torch

import workbench.contrast_decode as cd
from workbench.contrast import _banned, prompt_ids


def _stock(model, length):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _decode(pair, **kw):
    tuned, base = cd.hf_twin(pair.tuned), cd.hf_twin(pair.base)
    prefix = torch.tensor([prompt_ids(pair.tuned.tokenizer, "the apple is in")])
    s = cd.sample(tuned, base, prefix, n=5, max_new_tokens=12, alpha=0.1, gamma=1.0, temperature=1.0, eos=None,
                  banned=_banned(pair), generator=torch.Generator().manual_seed(0), **kw)
    b = cd.beam(tuned, base, prefix, n=3, num_beams=4, max_new_tokens=8, alpha=0.1, gamma=1.0, eos=None,
                banned=_banned(pair), **kw)
    return s, b


def test_preallocated_cache_equals_stock_cache(pair, monkeypatch):
    ours = _decode(pair)
    monkeypatch.setattr(cd, "_cache", _stock)
    stock = _decode(pair)
    for a, b in zip(ours, stock, strict=True):
        assert a.token_ids == b.token_ids and a.contrast == b.contrast and a.ended == b.ended
    assert len(set(map(tuple, ours[0].token_ids))) > 1  # samples differ: a real decode, not a constant


def test_cache_outgrowing_its_buffer_falls_back_to_growing(pair):
    twin = cd.hf_twin(pair.tuned)
    ids = torch.tensor([prompt_ids(pair.tuned.tokenizer, "the apple is in box")])
    cache = cd._cache(twin, 2)  # shorter than the prompt
    want = twin(input_ids=ids).logits[:, -1]
    got = twin(input_ids=ids[:, :-1], cache=cache, use_cache=True)
    got = twin(input_ids=ids[:, -1:], cache=got.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Overflowing after a few in-buffer steps keeps every earlier position.
    cache = cd._cache(twin, ids.shape[1] - 2)
    out = twin(input_ids=ids[:, :-3], cache=cache, use_cache=True)
    for i in range(ids.shape[1] - 3, ids.shape[1]):
        out = twin(input_ids=ids[:, i:i + 1], cache=out.past_key_values, use_cache=True)
    torch.testing.assert_close(out.logits[:, -1], want, atol=1e-5, rtol=0)
