"""fTRI: layers x experts routing maps, grouped by behaviour, scored against control."""

from __future__ import annotations

import ast

import pytest
import torch

import workbench as wb
from edits.experts import FTRI, SwitchCurve, SwitchExperts, force_curve, ftri, random_experts, switch_curve
from tests.experts.helpers import TEXTS, subject
from tests.tiny import tiny_checkpoint
from workbench.routing import capture_routing

DOG = ["the dog is in box one", "a big dog", "where is the dog ?", "the red dog and the cat", "dog dog"]
NO_DOG = ["the apple is in box one", "a big cat", "where is the car ?", "the red pen and the cup", "two cats"]


def test_planted_expert_is_found_and_switching_it_off_removes_it():
    """Make expert 3 of layer 0 the 'dog' expert; fTRI must rank it first, a random draw need not."""
    s = wb.load(tiny_checkpoint("mixtral"))  # private: we plant a router row
    dog = s.tokenizer.convert_tokens_to_ids("dog")
    emb = s.params["model.embed_tokens.weight"][dog]
    with torch.no_grad():
        s.params["model.layers.0.mlp.gate.weight"][3] = 40 * emb / emb.norm()
    for statistic in ("count", "weight"):
        scan = ftri(s, DOG, NO_DOG, statistic=statistic)
        assert scan.top(1) == ((0, 3),)
        assert scan.scores[0, 3] > 0.1
    with SwitchExperts(off=scan.top(1)).applied(s):
        again = ftri(s, DOG, NO_DOG)
    assert again.behaviour_map[0, 3] == 0 and again.scores[0, 3] == 0


def test_maps_are_capture_means_and_identical_sets_score_zero(tmp_path):
    s = subject("mixtral")
    scan = ftri(s, TEXTS, TEXTS)
    assert torch.equal(scan.scores, torch.zeros_like(scan.scores))
    r = capture_routing(s, TEXTS)
    assert torch.allclose(scan.behaviour_map, r.per_prompt("count").mean(0))
    last = ftri(s, TEXTS, TEXTS[:1], tokens="last", statistic="weight")
    assert torch.allclose(last.maps[:len(TEXTS)], r.selection("weight")[:, :, -1].permute(1, 0, 2))
    assert scan.maps.shape == (2 * len(TEXTS), len(s.arch.moe_layers), s.arch.n_experts)
    frame = scan.to_frame()
    assert len(frame) == len(s.arch.moe_layers) * s.arch.n_experts and set(frame["rank"]) == set(range(len(frame)))
    assert len(scan.plot().data) == 3
    back = FTRI.load(scan.save(tmp_path / "f"))
    assert torch.equal(back.maps, scan.maps) and back.group == scan.group


def test_group_by_uses_the_behaviour_the_model_shows():
    s = subject("olmoe")
    conts = s.generate(TEXTS + NO_DOG, max_new_tokens=4)
    shown = set(conts[:2])
    scan = ftri(s, TEXTS, NO_DOG, group_by=lambda c: c in shown, max_new_tokens=4)
    assert scan.continuations == tuple(conts)
    assert scan.group == tuple(int(c in shown) for c in conts)
    assert scan.source == (1,) * len(TEXTS) + (0,) * len(NO_DOG)
    sel = torch.tensor(scan.group) == 1
    assert torch.allclose(scan.scores, scan.maps[sel].mean(0) - scan.maps[~sel].mean(0))
    with pytest.raises(ValueError, match="no behaviour group"):
        ftri(s, TEXTS, NO_DOG, group_by=lambda c: False, max_new_tokens=2)


def test_response_tokens_are_the_generated_ones():
    s = subject("deepseek_v3")
    resp = ftri(s, TEXTS[:2], NO_DOG[:2], tokens="response", max_new_tokens=3)
    full = [f"{p} {c}".strip() for p, c in zip(resp.prompts, resp.continuations, strict=True)]
    r = capture_routing(s, full)
    for i, c in enumerate(resp.continuations):
        n = len(c.split())
        sel = r.selection("count")[:, i, -n:].mean(1) if n else torch.zeros_like(resp.maps[i])
        assert torch.allclose(resp.maps[i], sel)
    assert resp.layers == (1, 2) and resp.dense_layers == (0,)


def test_random_draws_and_curve():
    s = subject("mixtral")
    a, b = random_experts(s, 3, seed=1), random_experts(s, 3, seed=1)
    assert a == b and len(set(a)) == 3 and a != random_experts(s, 3, seed=2)
    assert not set(random_experts(s, 7, seed=0, exclude=[(0, 0)])) & {(0, 0)}
    base = s.forward(TEXTS)[:, -1]
    curve = switch_curve(s, [(1, 0), (0, 2)], [0, 1, 2], n_random=3,
                         measure=lambda sub: {"dlogit": float((sub.forward(TEXTS)[:, -1] - base).abs().max().detach())})
    f = curve.to_frame()
    top = f[f.selection == "top"]
    assert list(top["k"]) == [0, 1, 2] and top["dlogit"].iloc[0] == 0 and top["dlogit"].iloc[2] > 0
    assert (f.selection == "random").sum() == 6 and (f[f.selection == "random"]["dlogit"] > 0).all()
    sm = curve.summary()
    assert list(sm.columns) == ["k", "top_dlogit", "random_mean_dlogit", "random_sd_dlogit"]
    assert len(curve.plot().data) == 2
    scan = ftri(s, TEXTS, TEXTS[:2])
    assert [ly for ly, _ in scan.top_per_layer(2)] == [0, 0, 1, 1]


def test_force_curve_against_random_experts_in_the_same_layers(tmp_path):
    s = subject("mixtral")
    base = s.forward(TEXTS)[:, -1]
    on = [(0, 1), (1, 3)]
    curve = force_curve(s, on, [0, 2.0], n_random=3, seed=0,
                        measure=lambda sub: {"dlogit": float((sub.forward(TEXTS)[:, -1] - base).abs().max().detach())})
    f = curve.to_frame()
    assert list(f[f.selection == "top"]["bias"]) == [0.0, 2.0] and (f.selection == "random").sum() == 6
    rnd = f[f.selection == "random"]
    # each draw: one expert in each of the forced layers, never a forced one, the same at every bias
    for experts in rnd["experts"]:
        pairs = ast.literal_eval(experts)
        assert [ly for ly, _ in pairs] == [0, 1] and not set(pairs) & set(on)
    assert list(rnd[rnd.bias == 0.0]["experts"]) == list(rnd[rnd.bias == 2.0]["experts"])
    top = f[f.selection == "top"].set_index("bias")["dlogit"]
    assert top[2.0] > top[0.0] > 0  # forcing changes the output, more with a bias
    sm = curve.summary()
    assert list(sm.columns) == ["bias", "top_dlogit", "random_mean_dlogit", "random_sd_dlogit"]
    assert len(curve.plot().data) == 2 and curve.by == "bias"
    back = SwitchCurve.load(curve.save(tmp_path / "c"))
    assert back.by == "bias" and torch.allclose(torch.tensor(back.summary().to_numpy(float)), torch.tensor(sm.to_numpy(float)))
    with pytest.raises(ValueError, match="biases"):
        force_curve(s, on, [-1.0], measure=lambda sub: {})
    with pytest.raises(ValueError, match="force_curve: experts"):
        force_curve(s, [(0, 1, 2)], [1.0], measure=lambda sub: {})
    with pytest.raises(ValueError, match="at least one"):
        force_curve(s, [], [1.0], measure=lambda sub: {})
    with pytest.raises(ValueError, match="only top_k=2"):
        force_curve(s, [(0, 0), (0, 1), (0, 2)], [1.0], measure=lambda sub: {})


def test_bad_input():
    s = subject("mixtral")
    with pytest.raises(ValueError, match="statistic"):
        ftri(s, TEXTS, TEXTS, statistic="mean")
    with pytest.raises(ValueError, match="behaviour_prompts"):
        ftri(s, [], TEXTS)
    with pytest.raises(ValueError, match="tokens"):
        ftri(s, TEXTS, TEXTS, tokens="both")
    with pytest.raises(ValueError, match="not a mixture-of-experts"):
        ftri(wb.load(tiny_checkpoint("llama")), TEXTS, TEXTS)
    with pytest.raises(ValueError, match="k: expected"):
        ftri(s, TEXTS, TEXTS[:2]).top(99)
