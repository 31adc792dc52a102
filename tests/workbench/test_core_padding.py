"""Left- and right-padded batches give each sequence the numbers it gets alone.

Position ids are computed from the attention mask on both engines; TransformerLens 4 has
had a reported bug with left padding, so every component kind is checked, not only logits.
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny import tiny_subject
from workbench import Site

PROMPTS = ["the apple is in box", "where is paris ?", "a big red dog is on the house by the river"]
# One of each layout: GPT-2 (learned positions), NeoX (parallel, partial rotary), Llama,
# Gemma-2 (sliding window, softcap, post-norms), Mixtral (MoE routing per token).
FAMILIES = ("gpt2", "gpt_neox", "llama", "gemma2", "mixtral")


def _sites(s):
    L = s.arch.n_layers - 1
    want = [Site(0, "resid_pre"), Site(L, "resid_post"), Site(L, "z"), Site(0, "attn_out"), Site(L, "mlp_out"),
            Site(0, "pattern")]
    return [x for x in want if s.engine.supports(x)]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("engine", ["tl", "nnsight"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_single_runs(family, engine, side):
    s = tiny_subject(family, engine)
    sites = _sites(s)
    batch = s.tokenize(PROMPTS, padding_side=side)
    assert (batch.attention_mask == 0).any(), "the batch should contain padding"
    logits, cache = s.run(batch, cache=sites)
    for i, text in enumerate(PROMPTS):
        one = s.tokenize([text])
        n = one.input_ids.shape[1]
        real = batch.attention_mask[i].bool()
        assert torch.equal(batch.input_ids[i][real], one.input_ids[0])
        ref_logits, ref = s.run(one, cache=sites)
        torch.testing.assert_close(logits[i][real], ref_logits[0], atol=1e-5, rtol=0)
        for x in sites:
            got = cache[x][i]
            if x.component == "pattern":  # head query key: keep real queries and real keys
                got = got[:, real][:, :, real]
            else:
                got = got[real]
            assert got.shape[-2 if x.component == "pattern" else 0] == n
            torch.testing.assert_close(got, ref[x][0], atol=1e-5, rtol=0, msg=lambda m, x=x: f"{x}: {m}")


@pytest.mark.parametrize("engine", ["tl", "nnsight"])
def test_capture_last_token_ignores_padding(engine):
    """`capture(positions=-1)` reads every row's last real token, whatever the batch mix."""
    s = tiny_subject("llama", engine)
    site = Site(1, "resid_post")
    acts = s.capture(PROMPTS, [site], positions=-1, batch_size=2)
    for i, text in enumerate(PROMPTS):
        _, ref = s.run([text], cache=[site])
        torch.testing.assert_close(acts[site][i, 0], ref[site][0, -1], atol=1e-5, rtol=0)
