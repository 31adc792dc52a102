"""Model diffs: exact zeros for a self-diff, edits touch only what they name, parity with references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.tiny import guard_track, tiny_subject
from workbench import Add, ModelPair, Site
from workbench.diff import (
    ActivationDiff,
    DiffLens,
    LogitLens,
    WeightDiff,
    activation_diff,
    cka_distance,
    cka_feature_space,
    copy_subject,
    dare_check,
    diff_lens,
    edited_pair,
    effective_rank,
    logit_lens,
    module_of,
    top_share,
    weight_diff,
)

TEXTS = ["the apple is in box one , the car is in box two", "where is paris ?", "the red dog is big and good"]


@pytest.fixture(scope="module")
def twins():
    """Each family next to an independent copy of itself (separate tensors, same values)."""
    return {}


def _twin(twins, family):
    if family not in twins:
        s = tiny_subject(family)
        twins[family] = ModelPair(s, guard_track(copy_subject(s, name=f"{family}-copy")))
    return twins[family]


@pytest.mark.parametrize("family", ["llama", "mixtral", "gpt2"])
def test_self_diff_is_exactly_zero_in_every_view(twins, family):
    pair = _twin(twins, family)
    wd = weight_diff(pair)
    num = wd.frame.select_dtypes("number").drop(columns=["layer", "numel", "base_norm"])
    assert (num.fillna(0).to_numpy() == 0).all()
    assert wd.n_changed == 0 and wd.changed() == []
    assert all(np.all(s == 0) for s in wd.spectra.values())
    assert wd.global_share == (0.0, 0.0, 0.0) and wd.control_share == (0.0, 0.0, 0.0)
    assert np.all(np.nan_to_num(wd.heatmap().to_numpy(dtype=float)) == 0)

    ad = activation_diff(pair, TEXTS)
    assert np.all(ad.cos_dist == 0) and np.all(ad.cka_dist == 0)
    assert all(np.all(k == 0) for k in ad.kl) and ad.mean_kl == 0
    assert ad.n_tokens == sum(len(t) for t in ad.tokens)

    dl = diff_lens(pair, TEXTS)
    assert np.all(dl.logit_diff == 0) and np.all(dl.explained == 0) and np.all(dl.diff_ratio == 0)
    if pair.arch.is_moe:
        assert dl.usage_shift is not None and np.all(dl.usage_shift == 0)
        assert np.allclose(dl.usage_base.sum(-1), 1)

    ll = logit_lens(pair, TEXTS[0])
    assert np.array_equal(ll.top_probs[0], ll.top_probs[1]) and np.array_equal(ll.top_ids[0], ll.top_ids[1])


def test_copy_subject_is_independent():
    """A deep copy of a bridged model shares attention with the original; copy_subject must not."""
    s = tiny_subject("llama")
    c = copy_subject(s)
    x = s.tokenize(TEXTS)
    ref = s.forward(x)
    assert torch.equal(c.forward(x), ref)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert c.params[name].data_ptr() != s.params[name].data_ptr()
        with torch.no_grad():
            c.params[name].add_(0.5)
        assert (c.forward(x) - ref).abs().max() > 1e-3, f"changing the copy's {name} did not change the copy"
        assert torch.equal(s.forward(x), ref), f"changing the copy's {name} changed the original"
        with torch.no_grad():
            c.params[name].sub_(0.5)


@pytest.mark.parametrize("family,method", [("llama", "graft"), ("llama", "model_surgery"), ("mixtral", "graft")])
def test_edit_diff_touches_only_the_parameters_it_names(family, method):
    import edits.graft  # noqa: F401  (registers)
    import edits.surgery  # noqa: F401
    from edits.base import REGISTRY

    s = tiny_subject(family)
    if method not in REGISTRY:
        pytest.fail(f"{method} is not a registered edit; known: {sorted(REGISTRY)}")
    for cls in (REGISTRY[method],):
        edit = cls.example(s)
        pair = edited_pair(s, edit)
        wd = weight_diff(pair)
        touched = edit.touched(s)
        assert wd.changed() == touched, f"{cls.__name__}: diff shows {wd.changed()}, edit names {touched}"
        assert wd.n_changed == len(touched) > 0
        ad = activation_diff(pair, TEXTS[:2])
        assert ad.mean_kl > 0 and ad.cos_dist.max() > 0  # the edit is visible downstream too
        pair.tuned._edits[-1].revert()
        assert weight_diff(pair).n_changed == 0  # revert is exact


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "mixtral"])
def test_logit_lens_last_layer_equals_model_logits(family):
    s = tiny_subject(family)
    ll = logit_lens(s, TEXTS[0], k=3)
    with torch.no_grad():
        probs = torch.softmax(s.forward([TEXTS[0]])[0].double(), -1)
    top = probs.topk(3, dim=-1)
    assert np.allclose(ll.top_probs[0, -1], top.values.numpy(), atol=1e-5)
    assert np.array_equal(ll.top_ids[0, -1], top.indices.numpy())
    ids = s.tokenize([TEXTS[0]]).input_ids[0]
    nxt = probs[:-1].gather(-1, ids[1:, None])[:, 0].numpy()
    assert np.allclose(ll.next_prob[0, -1, :-1], nxt, atol=1e-5) and np.isnan(ll.next_prob[0, -1, -1])
    assert len(ll.to_frame()) == s.arch.n_layers * len(ll.tokens) * 3


def test_cka_and_cosine_match_references():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    y = x @ torch.randn(16, 16, generator=g) + 0.5 * torch.randn(200, 16, generator=g)
    assert abs((1 - cka_distance(x, y)) - cka_feature_space(x, y)) < 1e-10
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert cka_distance(x, 3.0 * x @ q) < 1e-10  # invariant to rotation and isotropic scale
    assert cka_distance(x, torch.randn(200, 16, generator=g)) > 0.5  # unrelated representations
    from workbench.diff_acts import unit_dist

    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)
    assert torch.allclose(1 - unit_dist(x.double(), y.double()), cos, atol=1e-12)


def test_kl_matches_torch_kl_div():
    base = tiny_subject("llama")
    from edits.graft import Graft

    pair = edited_pair(base, Graft.example(base))
    ad = activation_diff(pair, [TEXTS[1]])
    with torch.no_grad():
        lb = torch.log_softmax(pair.base.forward([TEXTS[1]])[0].double(), -1)
        lt = torch.log_softmax(pair.tuned.forward([TEXTS[1]])[0].double(), -1)
    ref = torch.nn.functional.kl_div(lb, lt, log_target=True, reduction="none").sum(-1)
    assert np.allclose(ad.kl[0], ref.numpy(), atol=1e-6) and ad.kl[0].max() > 0


def test_weight_diff_known_answers():
    s = tiny_subject("llama")
    t = copy_subject(s, name="rank1")
    name = "model.layers.1.mlp.up_proj.weight"
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(t.params[name].shape[0], generator=g), torch.randn(t.params[name].shape[1], generator=g)
    with torch.no_grad():
        t.params[name].add_(0.01 * torch.outer(u, v))
        t.params["model.layers.0.self_attn.v_proj.weight"][3, 5] += 2.0  # one big single entry
    wd = weight_diff(ModelPair(s, t))
    assert wd.changed() == sorted([name, "model.layers.0.self_attn.v_proj.weight"])
    row = wd.frame.set_index("name").loc[name]
    assert abs(row["eff_rank"] - 1) < 1e-3 and row["delta_norm"] == pytest.approx(0.01 * float(u.norm() * v.norm()), rel=1e-4)
    assert row["rel_norm"] == pytest.approx(row["delta_norm"] / float(s.params[name].detach().norm()), rel=1e-6)
    one = wd.frame.set_index("name").loc["model.layers.0.self_attn.v_proj.weight"]
    assert one["top0.01%"] == 1.0 and one["eff_rank"] == pytest.approx(1.0)
    # The single entry holds most of the global energy; a dense control of the same scale does not.
    assert wd.global_share[0] > 0.9 and wd.control_share[0] < 0.1
    assert wd.heatmap().loc[1, "up"] > 0 and wd.heatmap().loc[0, "v"] > 0 and wd.heatmap().loc[0, "q"] == 0


def test_helpers():
    assert module_of("model.layers.3.self_attn.q_proj.weight") == (3, "q")
    assert module_of("model.layers.2.mlp.gate.weight") == (2, "router")
    assert module_of("model.layers.2.mlp.gate_proj.weight") == (2, "gate")
    assert module_of("model.layers.0.mlp.experts.gate_up_proj") == (0, "experts_gate_up")
    assert module_of("transformer.h.1.attn.c_attn.weight") == (1, "qkv")
    assert module_of("model.norm.weight") == (-1, "norm") and module_of("lm_head.weight") == (-1, "unembed")
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(torch.zeros(3)) == 0.0
    assert top_share(torch.tensor([3.0, 0.0, 0.0, 4.0]), 0.25) == pytest.approx(16 / 25)


def test_dare_check_rescale_and_restore():
    s = tiny_subject("llama")
    t = copy_subject(s, name="noisy")
    with torch.no_grad():
        for _, p in t.params.items():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    pair = ModelPair(s, t)
    before = t.params.snapshot()

    def metric(subj):  # mean log-prob of the texts: differs between base and tuned
        x = subj.tokenize(TEXTS, padding_side="right")
        with torch.no_grad():
            lp = torch.log_softmax(subj.forward(x)[:, :-1].double(), -1).gather(-1, x.input_ids[:, 1:, None])[..., 0]
        return float((lp * x.attention_mask[:, 1:]).sum() / x.attention_mask[:, 1:].sum())

    res = dare_check(pair, metric, ps=(0.0, 0.5, 0.99), seeds=(0, 1))
    for k, v in t.params.items():
        assert torch.equal(v, before[k]), f"dare_check left {k} changed"
    f = res.frame
    p0 = f[f.p == 0.0]
    assert (p0["change"].abs() < 1e-12).all()  # nothing dropped: the tuned model itself
    assert res.base_metric != res.tuned_metric
    # Dropping 99 % of the delta: the two seeds give different masks, hence different metrics.
    hi = f[(f.p == 0.99) & (f.variant == "no_rescale")]
    assert hi["metric"].nunique() == 2
    # Without rescaling, 99 % dropped is close to the base model; rescaled it is not the base.
    assert (hi["recovered"].abs() < 0.2).all()
    assert len(res.summary()) == 6


def test_results_round_trip(tmp_path):
    from edits.graft import Graft

    pair = edited_pair(tiny_subject("mixtral"), Graft.example(tiny_subject("mixtral")))
    for i, res in enumerate([weight_diff(pair), activation_diff(pair, TEXTS), diff_lens(pair, TEXTS),
                             logit_lens(pair, TEXTS[0])]):
        back = type(res).load(res.save(tmp_path / str(i)))
        pd.testing.assert_frame_equal(back.to_frame().reset_index(drop=True), res.to_frame().reset_index(drop=True),
                                      check_dtype=False, obj=type(res).__name__)
        res.plot()
    assert isinstance(back, LogitLens) and WeightDiff and ActivationDiff and DiffLens


def test_diff_lens_finds_a_planted_token_and_expert_shift():
    """Known answers: a steering vector along one unembedding row at the last layer promotes that
    token there; dropping an expert on the tuned side removes it from its usage."""
    from workbench.engines.routing import LayerSwitch, add_switch
    from workbench.lens import final_norm, unembedding

    s = tiny_subject("mixtral")
    t = copy_subject(s, name="steered")
    w, _ = unembedding(s)
    j = int(w.norm(dim=-1).argmax())
    gain = final_norm(s).weight.detach()
    v = 50 * w[j] / gain
    last = s.arch.n_layers - 1
    layer = s.arch.moe_layers[0]
    remove = add_switch(t, {layer: LayerSwitch(drop=frozenset({1}))})
    try:
        with t.intervene(Add(Site(last, "resid_post"), v)):
            dl = diff_lens(ModelPair(s, t), TEXTS, k=3)
    finally:
        remove()
    assert dl.promoted[last][0] == s.tokenizer.convert_ids_to_tokens(j)
    assert dl.usage_tuned[0, 1] == 0 and dl.usage_base[0, 1] > 0
    assert np.allclose(dl.usage_tuned.sum(-1), 1) and dl.experts_frame()["shift"].abs().sum() > 0
    with pytest.raises(ValueError, match="texts"):
        diff_lens(ModelPair(s, t), [])


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_expert_usage_matches_routing_capture(family):
    """The router-hook fallback of diff_lens counts the same experts as workbench.routing."""
    from workbench.lens import _share, _usage
    from workbench.routing import capture_routing

    s = tiny_subject(family)
    layers = list(s.arch.moe_layers)
    counts = torch.zeros(len(layers), s.arch.n_experts, dtype=torch.float64)
    _usage(s, s.tokenize(TEXTS), layers, counts)
    ref = capture_routing(s, TEXTS, layers=layers, keep_logits=False, progress=False).frequency("count")
    assert np.allclose(_share(counts), (ref / ref.sum(-1, keepdim=True)).numpy(), atol=1e-6)
