"""Mechanics of the context knob on a tiny random Llama with the world's tokenizer (no organism needed).

Effects (narrow range, steering, transfer) are measured on the organisms in test_knob_organisms.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from probes.knob import (
    IntentPairs,
    Knob,
    LayerSearch,
    auroc,
    bare_metrics,
    cohens_d,
    diff_means_direction,
    fit_das_direction,
    fit_knob,
    intent_pairs,
    pair_metrics,
    search_layers,
    separation,
    steering_table,
)
from probes.knob_data import _metrics
from probes.knob_fit import interchange_logits, interchange_rows, last_token_acts
from probes.knob_search import _Patcher, bisect_lower, bisect_upper
from tests.tiny import guard_track
from workbench import load
from workbench.sites import Site
from workbench.tasks import context_vs_prior
from workbench.tasks.evaluate import pair_acc


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.tasks import build_tokenizer

    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, initializer_range=0.3)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("world-tiny")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return guard_track(load(path, name="world-tiny"))


@pytest.fixture(scope="module")
def world_pairs():
    return intent_pairs(24, seed=0, split="eval")


@pytest.fixture(scope="module")
def pairs(subject):
    """World items relabelled with the random model's own answers, kept where the intent word flips
    them (large init makes the tiny model opinionated): a model that 'follows the intent' on these."""
    from probes.knob_data import last_token_argmax

    w = intent_pairs(80, seed=0, split="eval")
    a, b = last_token_argmax(subject, w.prompt_ctx), last_token_argmax(subject, w.prompt_prior)
    keep = torch.nonzero(a != b).flatten().tolist()[:24]
    assert len(keep) >= 16
    words = subject.tokenizer.convert_ids_to_tokens
    return dataclasses.replace(w.subset(keep), answer_ctx=tuple(words(a[keep].tolist())),
                               answer_prior=tuple(words(b[keep].tolist())))


# --- pairs and metrics ---------------------------------------------------------------------------
def test_pairs_differ_only_in_the_intent(subject, world_pairs):
    pairs = world_pairs
    assert len(pairs) == 24
    pairs.check_lengths(subject)
    for c, p, b in zip(pairs.prompt_ctx, pairs.prompt_prior, pairs.prompt_bare, strict=True):
        assert c.replace("intent : context", "intent : prior") == p
        assert "intent" not in b and b == c.replace(" intent : context .", "")
    assert all(a != b for a, b in zip(pairs.answer_ctx, pairs.answer_prior, strict=True))


def test_pair_metrics_match_the_world_evaluator(subject):
    ex = context_vs_prior(40, seed=3, split="eval", intent="both")
    ours = pair_metrics(subject, IntentPairs.from_examples(ex))
    ref = pair_acc(subject, ex)
    assert ours.pair_acc == pytest.approx(ref["pair_acc"])
    assert ours.context_acc == pytest.approx(ref["context_acc"])
    assert ours.prior_acc == pytest.approx(ref["prior_acc"])


def test_memorisation_ratio_by_hand():
    ctx, prior = torch.tensor([1, 1, 1, 1]), torch.tensor([2, 2, 2, 2])
    pred_ctx = torch.tensor([1, 2, 2, 9])  # context, memory, memory, neither
    m = _metrics("x", "c", pred_ctx, torch.tensor([2, 2, 1, 2]), ctx, prior)
    assert m.memorisation_ratio == pytest.approx(2 / 3)
    assert m.context_acc == 0.25 and m.prior_acc == 0.75 and m.pair_acc == 0.25
    assert math.isnan(_metrics("x", "c", torch.tensor([9]), torch.tensor([9]), ctx[:1], prior[:1]).memorisation_ratio)


def test_bare_prompts_have_pair_acc_zero(subject, pairs):
    assert pair_metrics(subject, pairs).pair_acc == 1.0  # the relabelled items, with the instruction
    assert bare_metrics(subject, pairs).pair_acc == 0.0


def test_split_is_disjoint_and_complete(pairs):
    parts = pairs.split((0.5, 0.25, 0.25), seed=1)
    seen = [p for part in parts for p in part.prompt_ctx]
    assert sorted(seen) == sorted(pairs.prompt_ctx) and [len(p) for p in parts] == [12, 6, 6]


# --- the search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 2, 5, 8, 13])
def test_bisection_matches_brute_force_in_log_calls(L):
    rng = np.random.default_rng(L)
    for _ in range(20):
        w = rng.random(L)  # monotone in the set: patching more layers never moves less
        tau = rng.random() * w.sum()
        calls = []
        up = bisect_upper(lambda U: calls.append(U) or w[:U].sum(), L, tau)
        brute = next((U for U in range(1, L + 1) if w[:U].sum() > tau), L)
        assert up == brute and len(calls) <= math.ceil(math.log2(L))
        if w[:up].sum() > tau:
            calls = []
            lo = bisect_lower(lambda B: calls.append(B) or w[B:up].sum(), up, tau)
            assert lo == max(B for B in range(up) if w[B:up].sum() > tau)
            assert len(calls) <= math.ceil(math.log2(max(up, 1)))


def test_patching_every_layer_makes_the_last_token_the_source(subject, pairs):
    """attn_out at every layer is all that reaches the last position from elsewhere: the target's
    last-token stream (hence its output) becomes the source's exactly."""
    tg, src, ans = interchange_rows(pairs, subject.tokenizer)
    run = _Patcher(subject, tg, src, ans, batch_size=16)
    p_all, per_layer = run(tuple(range(subject.arch.n_layers)))
    with torch.no_grad():
        own = torch.cat([subject.forward(subject.tokenize(src[i:i + 16]))[:, -1].softmax(-1) for i in range(0, len(src), 16)])
    assert p_all == pytest.approx(float(own[torch.arange(len(ans)), ans].mean()), rel=1e-4)
    assert per_layer[-1] == pytest.approx(p_all, rel=1e-4)  # the lens of the last layer is the output
    p_none, _ = run(())
    assert p_none != pytest.approx(p_all, rel=1e-3)


def test_search_ends_on_a_boundary_and_is_drawable(subject, pairs, tmp_path):
    tg, src, ans = interchange_rows(pairs, subject.tokenizer)
    run = _Patcher(subject, tg, src, ans, batch_size=64)
    L = subject.arch.n_layers
    # a tau between "nothing" and "everything" patched, so the search has something to find
    p_none, p_all = run(())[0], run(tuple(range(L)))[0]
    f = lambda layers: run(tuple(layers))[0]  # noqa: E731
    rel = search_layers(subject, pairs, tau=(p_none / p_all + 1) / 2, keep="all")  # relative to the ceiling
    assert rel.threshold == pytest.approx((p_none + p_all) / 2, rel=1e-5) and "ceiling" in rel.stages
    s = search_layers(subject, pairs, tau=(p_none + p_all) / 2, criterion="absolute", keep="all")
    assert s.threshold == s.tau and (rel.lower, rel.upper) == (s.lower, s.upper)
    tau = s.threshold
    assert s.reached and s.n_patched_passes <= 2 * math.ceil(math.log2(L)) + 2
    assert f(range(s.upper)) > tau and (s.upper == 1 or f(range(s.upper - 1)) <= tau)
    assert f(range(s.lower, s.upper)) > tau and (s.lower == s.upper - 1 or f(range(s.lower + 1, s.upper)) <= tau)
    assert set(s.layers) >= set(range(s.lower, s.upper)) and s.site == Site(s.upper - 1, "resid_mid")
    assert s.patched.shape == (len(s.stages), L) and s.readout.shape == (len(s.stages), L)
    assert len(s.plot().data) == 1 + len(s.stages) and len(s.to_frame()) == len(s.stages) * L
    back = LayerSearch.load(s.save(tmp_path / "s"))
    assert back.layers == s.layers and np.array_equal(back.readout, s.readout)


# --- the direction ---------------------------------------------------------------------------------
SITE = Site(2, "resid_post")


def test_interchange_matches_transformer_lens(subject, pairs):
    from workbench.engines.tl_das import tl_interchange_logits

    tg, src, _ = interchange_rows(pairs, subject.tokenizer)
    u = torch.randn(subject.arch.d_model, generator=torch.Generator().manual_seed(1))
    u = u / u.norm()
    ours = interchange_logits(subject, tg, src, SITE, u)
    theirs = tl_interchange_logits(subject, SITE, tg, src, u)
    assert torch.allclose(ours, theirs.float(), atol=1e-4)
    with torch.no_grad():
        plain = torch.cat([subject.forward(subject.tokenize(tg))[:, -1]])
    assert (ours - plain).abs().max() > 1e-4


def test_das_learns_and_leaves_the_model_frozen(subject, pairs):
    flags = [p.requires_grad for p in subject.hf_model.parameters()]
    u, losses = fit_das_direction(subject, pairs, SITE, epochs=3, batch_size=8, lr=3e-2, seed=0)
    assert u.norm() == pytest.approx(1.0, abs=1e-5) and len(losses) == 3
    assert losses[-1] < losses[0]
    assert [p.requires_grad for p in subject.hf_model.parameters()] == flags


def test_diff_means_is_the_normalised_mean_difference(subject, pairs):
    acts = subject.capture(list(pairs.prompt_ctx) + list(pairs.prompt_prior), [SITE], positions=-1)[SITE][:, 0]
    n = len(pairs)
    ref = acts[n:].mean(0) - acts[:n].mean(0)
    assert torch.allclose(diff_means_direction(subject, pairs, SITE), ref / ref.norm(), atol=1e-5)


def test_fit_knob_result(subject, pairs, tmp_path):
    k = fit_knob(subject, pairs, SITE, method="diff_means", keep="all", random_seeds=(0,))
    assert isinstance(k, Knob) and k.direction.norm() == pytest.approx(1.0, abs=1e-5)
    assert k.c_ctx in k.grid and k.c_prior in k.grid and k.n_train == len(pairs.split((0.6, 0.2, 0.2))[0])
    u = k.direction
    train = pairs.split((0.6, 0.2, 0.2), seed=0)[0]
    assert ((last_token_acts(subject, train.prompt_prior, SITE) @ u).mean()
            >= (last_token_acts(subject, train.prompt_ctx, SITE) @ u).mean())  # oriented: prior high
    assert len(k.to_frame()) == len(k.proj_ctx) + len(k.proj_prior) and k.plot().data
    back = Knob.load(k.save(tmp_path / "k"))
    assert torch.equal(back.direction, k.direction) and back.site == k.site and back.c_ctx == k.c_ctx
    m = pair_metrics(subject, pairs, steer=k.steer())
    assert m.condition.startswith("steered") and 0 <= m.pair_acc <= 1


def test_separation_statistics():
    a, b = np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0])
    assert cohens_d(a, b) == pytest.approx(2.0)
    assert auroc(a, b) == pytest.approx((8 + 0.5) / 9)
    from sklearn.metrics import roc_auc_score

    r = np.random.default_rng(0)
    x, y = r.normal(size=30), r.normal(0.5, size=40)
    assert auroc(x, y) == pytest.approx(roc_auc_score([0] * 30 + [1] * 40, np.concatenate([x, y])))


def test_steering_table_has_controls(subject, pairs):
    val, test = pairs.split((0.5, 0.5))
    k = fit_knob(subject, pairs, SITE, method="diff_means", keep="all", random_seeds=())
    tab = steering_table([subject], {"diff_means": k}, val, test, random_seeds=(0, 1), grid_size=3)
    f = tab.to_frame()
    assert set(f["condition"]) == {"with intent", "no intent", "steered: diff_means", "steered: random"}
    assert (f["condition"] == "steered: random").sum() == 2
    assert len(tab.plot().data) == 4


# --- bad input -------------------------------------------------------------------------------------
def test_bad_input(subject, pairs, world_pairs):
    ex = context_vs_prior(10, seed=0, split="eval", intent="both")
    with pytest.raises(ValueError, match="lack an intent"):
        IntentPairs.from_examples([e for e in ex if not (e.meta["pair_id"] == 2 and e.meta["intent"] == "prior")])
    with pytest.raises(ValueError, match="lack an intent"):
        IntentPairs.from_examples(context_vs_prior(10, seed=0, split="eval", intent="context"))
    long = dataclasses.replace(pairs, prompt_prior=tuple(p.replace("intent : prior", "intent : from memory")
                                                         for p in pairs.prompt_prior))
    with pytest.raises(ValueError, match="token length"):
        search_layers(subject, long, keep="all")
    with pytest.raises(ValueError, match="out of range"):
        fit_knob(subject, pairs, Site(subject.arch.n_layers + 2, "resid_post"), keep="all")
    with pytest.raises(ValueError, match="d_model-wide"):
        fit_knob(subject, pairs, Site(1, "mlp_post"), keep="all")
    with pytest.raises(ValueError, match="method"):
        fit_knob(subject, pairs, SITE, method="pca")
    with pytest.raises(ValueError, match="IntentPairs"):
        fit_knob(subject, list(pairs.prompt_ctx), SITE)
    with pytest.raises(ValueError, match="tau"):
        search_layers(subject, pairs, tau=1.5)
    with pytest.raises(ValueError, match="criterion"):
        search_layers(subject, pairs, criterion="paper")
    k = fit_knob(subject, pairs, SITE, method="diff_means", keep="all", random_seeds=(), grid=[0.0])
    with pytest.raises(ValueError, match="size d_model"):
        separation(dataclasses.replace(k, direction=torch.ones(subject.arch.d_model + 3)), subject, pairs)
    with pytest.raises(ValueError, match="zero norm"):
        separation(dataclasses.replace(k, direction=torch.zeros(subject.arch.d_model)), subject, pairs)
    with pytest.raises(ValueError, match="answers none"):
        fit_knob(subject, world_pairs, SITE)  # a random model answers nothing right both ways
