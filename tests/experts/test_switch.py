"""SwitchExperts: switched-off experts are never selected (nor computed), forced ones always are,
an empty switch is the baseline exactly, in every family's own routing rules, on both engines."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from edits.base import Edit
from edits.experts import SwitchExperts
from tests.experts.helpers import CASES, TEXTS, subject
from tests.tiny import tiny_checkpoint
from workbench.engines import routing as R
from workbench.routing import capture_routing

MODES = ("drop_renorm", "mask_logits")


def _most_used(s, layer):
    r = capture_routing(s, TEXTS, layers=[layer])
    return int(r.frequency()[0].argmax())


@pytest.mark.parametrize("family,engine", CASES)
def test_empty_switch_is_baseline_exactly(family, engine):
    s = subject(family, engine)
    base = s.forward(TEXTS)
    gen = s.generate(TEXTS[:2], max_new_tokens=4)
    with SwitchExperts().applied(s):
        assert torch.equal(s.forward(TEXTS), base)
        assert s.generate(TEXTS[:2], max_new_tokens=4) == gen


@pytest.mark.parametrize("family,engine", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_switched_off_expert_is_never_selected(family, engine, mode):
    s = subject(family, engine)
    layer = s.arch.moe_layers[-1]
    e = _most_used(s, layer)
    base = s.forward(TEXTS)
    with SwitchExperts(off=[(layer, e)], mode=mode).applied(s):
        r = capture_routing(s, TEXTS)
        out = s.forward(TEXTS)
    li = r.layers.index(layer)
    real = r.attention_mask.bool()
    assert not (r.indices[li] == e).any()
    assert not torch.equal(out, base)
    sel = r.indices[li][real]
    if mode == "mask_logits":  # the next expert takes the slot: still top_k distinct experts per token
        assert (sel >= 0).all() and all(len(set(row.tolist())) == s.arch.top_k for row in sel)
    else:  # the slot is dropped and the token's total routed weight is kept
        base_r = capture_routing(s, TEXTS)
        tot, tot0 = r.weights[li][real].sum(-1), base_r.weights[li][real].sum(-1)
        hit = (base_r.indices[li][real] == e).any(-1) & (sel >= 0).any(-1)
        assert torch.allclose(tot[hit], tot0[hit], atol=1e-6)
        assert hit.any() and ((sel < 0).sum(-1) == (base_r.indices[li][real] == e).sum(-1)).all()
    for other in r.layers:  # other layers untouched
        if other != layer:
            assert torch.equal(r.indices[r.layers.index(other)], capture_routing(s, TEXTS).indices[r.layers.index(other)])


@pytest.mark.parametrize("impl", ["grouped_mm", "eager"])
@pytest.mark.parametrize("mode", MODES)
def test_switched_off_expert_is_never_computed(mode, impl):
    """NaN weights in the switched-off expert: a NaN-free output proves it never ran (HF's
    default fused `grouped_mm` experts and the eager loop; both skip the sentinel slot)."""
    s = wb.load(tiny_checkpoint("mixtral"))  # private copy: we poison its weights
    s.hf_model.config._experts_implementation = impl
    layer, e = 1, _most_used(s, 1)
    with torch.no_grad():
        s.params[f"model.layers.{layer}.mlp.experts.gate_up_proj"][e].fill_(float("nan"))
    assert torch.isnan(s.forward(TEXTS)).any()
    with SwitchExperts(off=[(layer, e)], mode=mode).applied(s):
        assert torch.isfinite(s.forward(TEXTS)).all()
        assert all(isinstance(t, str) for t in s.generate(TEXTS, max_new_tokens=3))
    assert torch.isnan(s.forward(TEXTS)).any()  # reverted: the poisoned expert runs again


@pytest.mark.parametrize("family,engine", CASES)
def test_forced_experts_are_always_selected(family, engine):
    s = subject(family, engine)
    layer = s.arch.moe_layers[0]
    freq = capture_routing(s, TEXTS, layers=[layer]).frequency()[0]
    e = int(freq.argmin())  # the least used expert
    with SwitchExperts(on=[(layer, e)]).applied(s):
        r = capture_routing(s, TEXTS, layers=[layer])
    real = r.attention_mask.bool()
    assert (r.indices[0][real] == e).any(-1).all()
    assert (r.weights[0][real] > 0).all() and torch.isfinite(r.weights).all()
    if family == "deepseek_v3":  # group-limited: every choice inside topk_group groups
        sp = R.spec(s, layer)
        groups = r.indices[0][real] // (sp.n_experts // sp.n_group)
        assert all(len(set(g.tolist())) <= sp.topk_group for g in groups)


@pytest.mark.parametrize("family,engine", CASES)
def test_force_bias_raises_the_forced_experts_weight(family, engine):
    """`on_bias` is added to the forced expert's router logit: still always selected, and its
    routed weight grows with the bias on every token (MoTE's "add a bias"); bias 0 is selection only."""
    s = subject(family, engine)
    layer = s.arch.moe_layers[0]
    e = int(capture_routing(s, TEXTS, layers=[layer]).frequency()[0].argmin())
    got = {}
    for b in (0.0, 2.0):
        with SwitchExperts(on=[(layer, e)], on_bias=b).applied(s):
            r = capture_routing(s, TEXTS, layers=[layer])
        real = r.attention_mask.bool()
        idx, w = r.indices[0][real], r.weights[0][real]
        assert (idx == e).any(-1).all()
        got[b] = (w * (idx == e)).sum(-1)
    assert (got[2.0] > got[0.0]).all()
    if family == "mixtral":  # softmax over biased logits, top-2 renormalised: by hand
        lg = r.logits[0][real].clone()
        lg[:, e] += 2.0
        p = torch.softmax(lg, -1)
        sel = p.masked_fill(torch.nn.functional.one_hot(torch.tensor(e), lg.shape[-1]).bool(), -1).max(-1).values
        assert torch.allclose(got[2.0], p[:, e] / (p[:, e] + sel), atol=1e-6)
    with pytest.raises(ValueError, match="on_bias"):
        SwitchExperts(on=[(layer, e)], on_bias=-1.0)
    with pytest.raises(ValueError, match="on_bias"):
        SwitchExperts(on=[(layer, e)], on_bias=float("inf"))


def test_switch_holds_at_every_kv_cached_decoding_step():
    s = subject("mixtral", "tl")
    layer, e = 1, _most_used(s, 1)
    seen: list[torch.Tensor] = []
    n = 5
    with SwitchExperts(off=[(layer, e)]).applied(s):
        with R.router_hooks(s, {layer: lambda lg, w, idx: seen.append(idx.clone())}):
            got = s.generate(TEXTS[:2], max_new_tokens=n, stop_at_eos=False)
        # the same greedy decoding without a cache, one full forward per token
        ids = s.tokenize(TEXTS[:2])
        for _ in range(n):
            nxt = s.forward(ids)[:, -1].argmax(-1)
            ids = wb.Tokens(torch.cat([ids.input_ids, nxt[:, None]], 1),
                            torch.cat([ids.attention_mask, torch.ones_like(nxt)[:, None]], 1))
    assert len(seen) == n and seen[1].shape[0] == 2  # prompt pass + one step per new token
    assert not any((x == e).any() for x in seen)
    manual = s.tokenizer.batch_decode(ids.input_ids[:, -n:], skip_special_tokens=True)
    assert [g.split() for g in got] == [m.split() for m in manual]


def test_engines_agree_on_switched_logits():
    a, b = subject("olmoe", "tl"), subject("olmoe", "nnsight")
    edit = SwitchExperts(off=[(0, 1), (1, 2)], on=[(1, 0)], mode="mask_logits")
    with edit.applied(a), edit.applied(b):
        assert torch.allclose(a.forward(TEXTS), b.forward(TEXTS), atol=1e-6)


def test_stacking_revert_and_save_load(tmp_path):
    s = subject("qwen2_moe")
    base = s.forward(TEXTS)
    e1, e2 = SwitchExperts(off=[(0, 1)]), SwitchExperts(off=[(1, 3)], on=[(0, 2)], mode="mask_logits")
    with e1.applied(s):
        one = s.forward(TEXTS)
        with e2.applied(s):
            both = s.forward(TEXTS)
            assert R.active_switches(s)[0].force == {2}
            # layer 0 drops a selected expert: the sentinel slot is honoured on that call; layer 1 only
            # masks (no sentinel), so its experts run the stock path untouched
            assert R.experts_module(s, 0)._is_expert_parallel
            assert not R.experts_module(s, 1)._is_expert_parallel
        assert torch.equal(s.forward(TEXTS), one)
    assert torch.equal(s.forward(TEXTS), base) and not R.active_switches(s)
    assert not any(R.experts_module(s, ly)._is_expert_parallel for ly in s.arch.moe_layers)
    assert not any("forward" in R.experts_module(s, ly).__dict__ for ly in s.arch.moe_layers)
    with SwitchExperts(off=[(0, 1), (1, 3)], on=[(0, 2)], mode="mask_logits").applied(s):
        pass
    assert not torch.equal(both, one)
    back = Edit.load(e2.save(tmp_path / "e"))
    assert back == e2 and isinstance(back, SwitchExperts)
    with back.applied(s):
        x = s.forward(TEXTS)
    with e2.applied(s):
        assert torch.equal(s.forward(TEXTS), x)
    biased = SwitchExperts(on=[(0, 2)], on_bias=1.5)
    back = Edit.load(biased.save(tmp_path / "b"))
    assert back == biased and back.on_bias == 1.5 and back != SwitchExperts(on=[(0, 2)])


def test_bad_input_is_refused_clearly():
    s, ds = subject("mixtral"), subject("deepseek_v3")
    with pytest.raises(ValueError, match="expert 9 at layer 1 out of range; valid 0..3"):
        SwitchExperts(off=[(1, 9)]).apply(s)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        SwitchExperts(on=[(5, 0)]).apply(s)
    with pytest.raises(ValueError, match="layer 0 is a dense layer"):
        SwitchExperts(off=[(0, 1)]).apply(ds)
    with pytest.raises(ValueError, match="not a mixture-of-experts"):
        SwitchExperts(off=[(0, 0)]).apply(wb.load(tiny_checkpoint("llama")))
    with pytest.raises(ValueError, match="only top_k=2"):
        SwitchExperts(on=[(1, 0), (1, 1), (1, 2)]).apply(s)
    with pytest.raises(ValueError, match="topk_group"):
        SwitchExperts(on=[(1, 0), (1, 3)]).apply(ds)  # groups {0,1} and {2,3}, topk_group=1
    with pytest.raises(ValueError, match="leaves 1 experts"):
        SwitchExperts(off=[(1, 0), (1, 1), (1, 2)], mode="mask_logits").apply(s)
    with pytest.raises(ValueError, match="both switched off and forced on"):
        SwitchExperts(off=[(1, 0)], on=[(1, 0)])
    with pytest.raises(ValueError, match="int pairs"):
        SwitchExperts(off=[(1, 0, 2)])
    with pytest.raises(ValueError, match="duplicate"):
        SwitchExperts(off=[(1, 0), (1, 0)])
    with pytest.raises(ValueError, match="mode"):
        SwitchExperts(off=[(1, 0)], mode="zero")
    with pytest.raises(ValueError, match="made for model"):
        SwitchExperts(off=[(1, 0)], model_id="0" * 16).apply(s)
    assert not R.active_switches(s) and not R.active_switches(ds)


def test_example_has_a_visible_effect():
    s = subject("mixtral")
    base = s.forward(TEXTS)
    with SwitchExperts.example(s).applied(s):
        assert (s.forward(TEXTS) - base).abs().max() > 1e-4


@pytest.mark.parametrize("family", [f for f, e in CASES if e == "tl"])
def test_sentinel_fast_path_matches_stock_grouped_mm(family, monkeypatch):
    """On CPU a call with dropped slots skips the stock grouped_mm's full-size sentinel masking
    (`_grouped_mm_without_sentinels`): same logits bit for bit as the stock flag path."""
    s = subject(family, "tl")
    a = s.arch
    edit = SwitchExperts(off=[(ly, e) for ly in a.moe_layers for e in (0, a.n_experts - 1)])
    calls = []
    fast = R._grouped_mm_without_sentinels
    monkeypatch.setattr(R, "_grouped_mm_without_sentinels", lambda *x: calls.append(1) or fast(*x))
    with edit.applied(s):
        got = s.forward(TEXTS)
    assert calls  # the fast path ran
    monkeypatch.setattr(R, "_stock_grouped_mm", lambda ex: False)
    with edit.applied(s):
        stock = s.forward(TEXTS)
    assert torch.equal(got, stock)
