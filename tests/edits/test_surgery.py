"""Model Surgery on tiny random models: selection, the write, the activation-level twin, controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edits.surgery import GateAdd, ModelSurgery, SurgeryEval, SurgeryReport, evaluate_surgery, gate_scores
from probes.linear import BehaviorProbe
from tests.conftest import track
from tests.tiny import tiny_checkpoint
from workbench import load
from workbench.behaviour import BehaviourEval, evaluate_behaviour, evaluate_capability

TEXTS = ["the apple is in box", "where is paris ? paris is in", "the big dog and the small cat is"]
_S: dict = {}


def _subject(family="llama", engine="tl"):
    if (family, engine) not in _S:
        _S[family, engine] = track(load(tiny_checkpoint(family), engine=engine, name=f"{family}-{engine}"))
    return _S[family, engine]


@pytest.fixture(scope="module")
def subject():
    return _subject()


def _w(subject, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(subject.arch.d_model, generator=g)


def test_selection_is_the_globally_most_negative_cosine(subject):
    w = _w(subject)
    edit = ModelSurgery.fit(subject, w, n_rows=10)
    # Brute force in numpy over every (layer, row), on gate_proj as plain transformers loads it
    # (unfolded: no engine, no LayerNorm folding).
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama"))
    cand = []
    for layer in range(subject.arch.n_layers):
        W = hf.model.layers[layer].mlp.gate_proj.weight.detach().numpy()
        cos = W @ w.numpy() / (np.linalg.norm(W, axis=1) * np.linalg.norm(w.numpy()))
        cand += [(c, layer, r) for r, c in enumerate(cos)]
    want = {(ly, r) for _, ly, r in sorted(cand)[:10]}
    assert {tuple(x) for x in edit.rows.tolist()} == want
    assert edit.model_id == subject.identity() and edit.n_rows == 10
    scores = gate_scores(subject, w)
    chosen = torch.tensor([scores[ly][r] for ly, r in edit.rows.tolist()])
    others = torch.cat(list(scores.values()))
    assert chosen.max() <= others.sort().values[9] + 1e-7


def test_fraction_and_argument_checks(subject):
    w = _w(subject)
    total = subject.arch.n_layers * subject.arch.d_mlp
    assert len(ModelSurgery.fit(subject, w, fraction=0.1).rows) == round(0.1 * total)
    with pytest.raises(ValueError, match="exactly one"):
        ModelSurgery(direction=w, n_rows=3, fraction=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        ModelSurgery(direction=w)
    with pytest.raises(ValueError, match="fraction"):
        ModelSurgery(direction=w, fraction=1.5)
    with pytest.raises(ValueError, match="n_rows"):
        ModelSurgery.fit(subject, w, n_rows=total + 1)
    with pytest.raises(ValueError, match="direction"):
        ModelSurgery.fit(subject, torch.randn(7), n_rows=2)
    with pytest.raises(ValueError, match="matrices"):
        ModelSurgery(direction=w, n_rows=2, matrices="q")
    with pytest.raises(ValueError, match="direction"):
        ModelSurgery(direction=torch.zeros(subject.arch.d_model), n_rows=2)


def test_apply_adds_alpha_w_to_exactly_the_chosen_rows(subject):
    w = _w(subject)
    edit = ModelSurgery.fit(subject, w, n_rows=6, alpha=0.7)
    before = {ly: subject.params.gate(ly).clone() for ly in range(subject.arch.n_layers)}
    with edit.applied(subject):
        for ly in range(subject.arch.n_layers):
            after = subject.params.gate(ly)
            rows = [r for l2, r in edit.rows.tolist() if l2 == ly]
            expect = before[ly].clone()
            expect[rows] += 0.7 * w
            assert torch.allclose(after, expect, atol=1e-7)
            mask = torch.ones(len(after), dtype=torch.bool)
            mask[rows] = False
            assert torch.equal(after[mask], before[ly][mask])
        assert edit.touched(subject) == sorted({f"model.layers.{ly}.mlp.gate_proj.weight" for ly, _ in edit.rows.tolist()})


def test_unpinned_spec_selects_at_apply_time(subject):
    w = _w(subject)
    spec = ModelSurgery(direction=w, n_rows=5, alpha=1.0)
    fitted = ModelSurgery.fit(subject, w, n_rows=5, alpha=1.0)
    with spec.applied(subject):
        a = subject.forward(TEXTS)
    with fitted.applied(subject):
        b = subject.forward(TEXTS)
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_activation_edit_gives_the_same_logits_as_the_weight_edit(family):
    s = _subject(family)
    w = _w(s) * 3
    edit = ModelSurgery.fit(s, w, n_rows=8, alpha=1.5)
    base = s.forward(TEXTS)
    with edit.applied(s):
        a = s.forward(TEXTS)
        gen_w = s.generate(TEXTS, max_new_tokens=6)
    act = edit.as_activation_edit()
    assert isinstance(act, GateAdd)
    with act.applied(s):
        b = s.forward(TEXTS)
        gen_a = s.generate(TEXTS, max_new_tokens=6)
    assert (a - base).abs().max() > 1e-3  # the edit does something ...
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)  # ... and both forms agree
    assert gen_w == gen_a


def test_both_engines_give_the_same_edited_logits():
    tl, nn = _subject("llama", "tl"), _subject("llama", "nnsight")
    w = _w(tl)
    edit = ModelSurgery.fit(tl, w, n_rows=8, alpha=2.0)
    assert edit == ModelSurgery.fit(nn, w, n_rows=8, alpha=2.0)  # same unprocessed weights, same rows
    for e in (edit, edit.as_activation_edit()):
        with e.applied(tl):
            a = tl.forward(TEXTS)
        with e.applied(nn):
            b = nn.forward(TEXTS)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_random_control_and_negative_alpha(subject):
    w = _w(subject)
    edit = ModelSurgery.fit(subject, w, n_rows=12)
    r0 = ModelSurgery.random(subject, w, n_rows=12, seed=0)
    assert len({tuple(x) for x in r0.rows.tolist()}) == 12
    assert r0 == ModelSurgery.random(subject, w, n_rows=12, seed=0)
    assert r0 != ModelSurgery.random(subject, w, n_rows=12, seed=1)
    assert r0.rows[:, 1].max() < subject.arch.d_mlp
    small = edit.with_alpha(1e-3)  # small enough that the MLP responds linearly
    neg = small.with_alpha(-1e-3)
    assert torch.equal(neg.rows, edit.rows) and torch.equal(neg.direction, edit.direction)
    base = subject.forward(TEXTS)
    with small.applied(subject):
        up = subject.forward(TEXTS) - base
    with neg.applied(subject):
        down = subject.forward(TEXTS) - base
    assert torch.corrcoef(torch.stack([up.flatten(), down.flatten()]))[0, 1] < -0.9  # opposite effects


def test_report_counts_rows_and_relative_norm(subject, tmp_path):
    w = _w(subject)
    edit = ModelSurgery.fit(subject, w, n_rows=9, alpha=0.5)
    rep = edit.report(subject)
    assert sum(n for _, n in rep.rows_per_layer) == 9 and rep.n_rows == 9
    assert [ly for ly, _ in rep.rows_per_layer] == list(range(subject.arch.n_layers))
    with edit.applied(subject):
        after = torch.cat([subject.params.gate(ly).clone() for ly in range(subject.arch.n_layers)])
    before = torch.cat([subject.params.gate(ly) for ly in range(subject.arch.n_layers)])
    assert rep.rel_norm == pytest.approx(float((after - before).norm() / before.norm()), rel=1e-4)
    assert rep.fraction_of_gate_rows == pytest.approx(9 / (subject.arch.n_layers * subject.arch.d_mlp))
    assert rep.to_frame()["rows"].sum() == 9 and len(rep.plot().data) == 1
    assert SurgeryReport.load(rep.save(tmp_path / "r")) == rep


def test_fit_from_a_probe_uses_the_raw_undesired_row(subject):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, subject.arch.d_model)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    probe = BehaviorProbe().fit(X, y)
    edit = ModelSurgery.fit(subject, probe, n_rows=4)
    assert torch.equal(edit.direction, probe.direction(1))
    assert torch.equal(ModelSurgery.fit(subject, probe, n_rows=4, undesired=0).direction, probe.direction(0))


# --- evaluation helpers -----------------------------------------------------------------------

def test_evaluate_behaviour_is_greedy_generation_judged(subject, tmp_path):
    judge = lambda t: "apple" in t.split()  # noqa: E731
    ev = evaluate_behaviour(subject, TEXTS, judge, max_new_tokens=5, batch_size=2)
    assert list(ev.continuations) == subject.generate(TEXTS, max_new_tokens=5)
    assert ev.rate == pytest.approx(np.mean([judge(c) for c in ev.continuations]))
    assert BehaviourEval.load(ev.save(tmp_path / "b")) == ev
    with pytest.raises(ValueError, match="judge"):
        evaluate_behaviour(subject, TEXTS, lambda t: "yes", max_new_tokens=2)
    with pytest.raises(ValueError, match="prompts"):
        evaluate_behaviour(subject, [], judge)


def test_evaluate_capability_takes_named_callables(subject):
    cap = evaluate_capability(subject, {"one": lambda s: 1.0, "ntok": lambda s: float(s.arch.d_model)})
    assert cap.scores_dict() == {"one": 1.0, "ntok": float(subject.arch.d_model)} and cap["one"] == 1.0
    with pytest.raises(ValueError, match="tasks"):
        evaluate_capability(subject, {})
    with pytest.raises(ValueError, match="bad"):
        evaluate_capability(subject, {"bad": lambda s: "x"})


def test_evaluate_surgery_has_every_control(subject, tmp_path):
    w = _w(subject) * 5
    edit = ModelSurgery.fit(subject, w, n_rows=8, alpha=2.0)
    res = evaluate_surgery(subject, edit, TEXTS, lambda t: "apple" in t.split(), tasks={"one": lambda s: 1.0},
                           seeds=(0, 1), max_new_tokens=4)
    f = res.to_frame()
    assert list(f["condition"]) == ["base", "surgery", "random", "random", "negative alpha"]
    assert list(f["seed"].iloc[2:4]) == [0, 1] and (f["one"] == 1.0).all()
    assert 0 <= res.rate("surgery") <= 1 and len(res.plot().data) >= 1
    assert SurgeryEval.load(res.save(tmp_path / "s")).to_frame().equals(f)


def test_surgery_grid_and_the_validation_rule(subject):
    from edits.surgery import SurgeryGrid, alpha_for, surgery_grid

    w = _w(subject)
    a = alpha_for(subject, w, 2.0)
    rows = torch.cat([subject.params.gate(ly) for ly in range(subject.arch.n_layers)])
    assert a * float(w.norm()) == pytest.approx(2.0 * float(rows.norm(dim=1).mean()), rel=1e-5)
    g = surgery_grid(subject, w, TEXTS, lambda t: "apple" in t.split(), tasks={"one": lambda s: 1.0},
                     n_rows=(2, 4), scales=(1.0, 2.0), max_new_tokens=3)
    assert len(g.to_frame()) == 4 and set(g.baseline) == {"behaviour_rate", "one"}
    # several candidate directions (e.g. one probe per layer): the direction is one more grid axis
    g2 = surgery_grid(subject, {"w": w, "-w": -w}, TEXTS, lambda t: "apple" in t.split(),
                      tasks={"one": lambda s: 1.0}, n_rows=(2,), scales=(1.0,), max_new_tokens=3)
    f2 = g2.to_frame()
    assert list(f2["direction"]) == ["w", "-w"] and g2.best()["direction"] in ("w", "-w")
    assert f2["behaviour_rate"].iloc[0] == g.to_frame()["behaviour_rate"].iloc[0]  # same edit, same number
    assert len(g2.plot().data) == 2
    with pytest.raises(ValueError, match="direction"):
        surgery_grid(subject, {}, TEXTS, lambda t: True, tasks={})
    # The rule, on a hand-made grid: lowest rate among settings within max_drop on every task.
    hand = SurgeryGrid(({"n_rows": 8, "scale": 1.0, "alpha": 1.0, "behaviour_rate": 0.1, "cap": 0.5},
                        {"n_rows": 4, "scale": 1.0, "alpha": 1.0, "behaviour_rate": 0.3, "cap": 0.99},
                        {"n_rows": 2, "scale": 1.0, "alpha": 1.0, "behaviour_rate": 0.3, "cap": 0.985}),
                       {"behaviour_rate": 0.6, "cap": 1.0})
    assert hand.best(0.02)["n_rows"] == 2  # 8 rows breaks capability; tie on rate -> fewer rows
    with pytest.raises(ValueError, match="no setting"):
        hand.best(0.001)
