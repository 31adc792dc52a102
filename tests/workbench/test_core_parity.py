"""TransformerLens and nnsight engines agree: on which sites exist, on every activation, and
on what an intervention does, at the prompt pass and at every KV-cached decoding step."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import FAMILIES, families_param, tiny_subject
from workbench import COMPONENTS, Add, Patch, SetProjection, Site
from workbench.engines.nnsight import nnsight_path

PROMPTS = ["the apple is in box", "where is paris ?", "a big red dog is on the house by the river"]
families = pytest.mark.parametrize("family", FAMILIES)


def _all_sites(s):
    return [Site(layer, c) for layer in range(s.arch.n_layers) for c in COMPONENTS]


@families
def test_engines_agree_on_supported_sites(family):
    tl, nn = tiny_subject(family, "tl"), tiny_subject(family, "nnsight")
    differ = [str(x) for x in _all_sites(tl) if tl.engine.supports(x) != nn.engine.supports(x)]
    assert differ == []
    # Every family has the residual stream, attention and MLP outputs, and per-head z at every layer.
    for layer in range(tl.arch.n_layers):
        for c in ("resid_pre", "resid_post", "attn_out", "mlp_out", "z", "pattern"):
            assert nn.engine.supports(Site(layer, c)), (family, layer, c)
    moe = set(tl.arch.moe_layers)
    for layer in range(tl.arch.n_layers):
        assert nn.engine.supports(Site(layer, "router_logits")) == (layer in moe)
        assert nn.engine.supports(Site(layer, "mlp_post")) == (layer not in moe)


@families
def test_engines_give_the_same_activations_everywhere(family):
    tl, nn = tiny_subject(family, "tl"), tiny_subject(family, "nnsight")
    sites = [x for x in _all_sites(tl) if tl.engine.supports(x)]
    toks = tl.tokenize(PROMPTS)
    la, ca = tl.run(toks, cache=sites)
    lb, cb = nn.run(toks, cache=sites)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=0)
    for x in sites:
        assert ca[x].shape == cb[x].shape, f"{x}: tl {tuple(ca[x].shape)} vs nnsight {tuple(cb[x].shape)}"
        torch.testing.assert_close(ca[x], cb[x], atol=1e-5, rtol=0, msg=lambda m, x=x: f"{x}: {m}")


def _steer(s, seed=0):
    """Non-trivial interventions at several component kinds (what both engines must apply alike)."""
    g = torch.Generator().manual_seed(seed)
    d, L = s.arch.d_model, s.arch.n_layers
    mid = "resid_mid" if s.engine.supports(Site(0, "resid_mid")) else "attn_out"
    return [
        Add(Site(0, mid), torch.randn(d, generator=g)),
        Patch(Site(0, "z", head=1), torch.zeros(1, 1, s.arch.d_head),
              positions=[1]),
        SetProjection(Site(L - 1, "resid_pre"), torch.randn(d, generator=g), 3.0, positions=-1),
        Add(Site(L - 1, "mlp_out"), torch.randn(d, generator=g)),
    ]


@families
def test_interventions_act_alike_on_both_engines(family):
    tl, nn = tiny_subject(family, "tl"), tiny_subject(family, "nnsight")
    toks = tl.tokenize(PROMPTS)
    base = tl.forward(toks)
    # Read the intervened sites themselves and one downstream: a cache sees the edited values.
    sites = sorted({iv.site.whole for iv in _steer(tl)} | {Site(tl.arch.n_layers - 1, "resid_post")})
    with tl.intervene(*_steer(tl)):
        a, ca = tl.run(toks, cache=sites)
    with nn.intervene(*_steer(nn)):
        b, cb = nn.run(toks, cache=sites)
    assert (a - base).abs().max() > 1e-2, "the steering should change the logits"
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for x in sites:
        torch.testing.assert_close(ca[x], cb[x], atol=1e-5, rtol=0, msg=lambda m, x=x: f"{x}: {m}")
    assert torch.equal(ca[Site(0, "z")][:, 1, 1], torch.zeros_like(ca[Site(0, "z")][:, 1, 1]))


@families_param(heavy=True)
def test_generation_agrees_and_steers_every_decoding_step(family):
    """Steering (positions=None) at every KV-cached step == a greedy loop with no cache at all."""
    tl, nn = tiny_subject(family, "tl"), tiny_subject(family, "nnsight")
    d, L = tl.arch.d_model, tl.arch.n_layers
    steer = Add(Site(L - 1, "resid_post"), 4 * torch.randn(d, generator=torch.Generator().manual_seed(1)))
    with tl.intervene(steer):
        got_tl = tl.generate(PROMPTS[:2], max_new_tokens=4, stop_at_eos=False)
    with nn.intervene(steer):
        got_nn = nn.generate(PROMPTS[:2], max_new_tokens=4, stop_at_eos=False)
    assert got_tl == got_nn
    # Prompt-only (absolute positions) and last-token interventions mixed: still the same on both.
    with tl.intervene(*_steer(tl)):
        a = tl.generate(PROMPTS[:2], max_new_tokens=3, stop_at_eos=False)
    with nn.intervene(*_steer(nn)):
        b = nn.generate(PROMPTS[:2], max_new_tokens=3, stop_at_eos=False)
    assert a == b
    assert got_tl != tl.generate(PROMPTS[:2], max_new_tokens=4, stop_at_eos=False), "steering had no effect"
    # Reference: recompute the whole sequence each step (no cache) with the steering on everywhere.
    toks = tl.tokenize(PROMPTS[:2])
    ids, mask = toks.input_ids, toks.attention_mask
    with tl.intervene(steer), torch.no_grad():
        for _ in range(4):
            nxt = tl.forward(ids, mask)[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    ref = [x.strip() for x in tl.tokenizer.batch_decode(ids[:, toks.input_ids.shape[1]:], skip_special_tokens=True)]
    assert got_tl == ref


def test_nnsight_module_paths_are_family_specific():
    from workbench.arch import Arch

    def arch(family):
        return Arch(family, 2, 4, 4, 32, 8, 48, 64)

    assert nnsight_path(Site(1, "z"), arch("gpt2")).module == "transformer.h.1.attn.c_proj"
    assert nnsight_path(Site(0, "mlp_post"), arch("gpt_neox")).module == "gpt_neox.layers.0.mlp.dense_4h_to_h"
    assert nnsight_path(Site(0, "attn_out"), arch("gemma2")).module == "model.layers.0.post_attention_layernorm"
    assert nnsight_path(Site(0, "attn_out"), arch("llama")).module == "model.layers.0.self_attn"
    p = nnsight_path(Site(1, "resid_post"), arch("llama"))
    assert (p.module, p.io, p.index) == ("model.layers.1", "output", None)


def test_sampled_generation_with_a_seed_is_reproducible_and_engine_independent():
    tl, nn = tiny_subject("llama", "tl"), tiny_subject("llama", "nnsight")
    a = tl.generate(PROMPTS, max_new_tokens=5, do_sample=True, seed=3)
    assert a == tl.generate(PROMPTS, max_new_tokens=5, do_sample=True, seed=3)
    assert a == nn.generate(PROMPTS, max_new_tokens=5, do_sample=True, seed=3)
    assert a != tl.generate(PROMPTS, max_new_tokens=5, do_sample=True, seed=4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "deepseek_v3"])
def test_params_are_hf_named_views_on_both_engines(family):
    """Weights are HF's on either engine: same names, same identity, and a write through a
    `params` view reaches the forward pass of that engine."""
    tl, nn = tiny_subject(family, "tl"), tiny_subject(family, "nnsight")
    assert tl.params.names() == nn.params.names()
    assert tl.identity() == nn.identity()
    for s in (tl, nn):
        gate = s.params.gate(0)  # [d_mlp, d_model] whatever the storage (GPT-2's Conv1D is transposed)
        assert tuple(gate.shape) == (s.arch.mlp_width(0), s.arch.d_model)
        base = s.forward(PROMPTS[:1])
        old = gate.clone()
        gate.mul_(2.0)
        try:
            assert not torch.allclose(s.forward(PROMPTS[:1]), base)
        finally:
            gate.copy_(old)
        assert torch.equal(s.forward(PROMPTS[:1]), base)
