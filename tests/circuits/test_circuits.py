"""Entity positions, mean-ablation faithfulness and its random control."""

from __future__ import annotations

import pytest
import torch

from workbench.circuits import Circuit, Faithfulness, entity_batch, faithfulness


def test_entity_positions_point_at_the_right_tokens(subj, pairs):
    clean, _ = pairs
    eb = entity_batch(subj, clean)
    ids = subj.tokenize(list(eb.prompts)).input_ids
    tok = subj.tokenizer
    ar = torch.arange(len(clean))
    for i, e in enumerate(clean):
        assert tok.convert_ids_to_tokens(int(ids[i, eb.positions["earlier"][i]])) == e.meta["query_label"]
        assert tok.convert_ids_to_tokens(int(ids[i, eb.positions["query_label"][i]])) == e.meta["query_label"]
        assert tok.convert_ids_to_tokens(int(ids[i, eb.positions["object"][i]])) == e.target
    assert (ids[ar, eb.positions["object"]] == eb.answers).all()


def test_ablating_with_the_batch_own_values_changes_nothing(subj, pairs):
    """One prompt, mean over itself: 'mean ablation' writes back the same values, for any circuit."""
    clean, _ = pairs
    eb = entity_batch(subj, clean[:1])
    pred = subj.forward(list(eb.prompts))[:, -1].argmax(-1)  # the model's own answer: accuracy 1
    circ = Circuit(groups={"A": ((2, 0),)}, positions={"A": "last"})
    f = faithfulness(subj, list(eb.prompts), pred, circ, {k: v[:1] for k, v in eb.positions.items()}, seeds=(0, 1))
    assert f.model_accuracy == 1.0 and f.circuit_accuracy == 1.0 and f.faithfulness == 1.0
    assert f.random_faithfulness == (1.0, 1.0)


def test_ablation_bites_and_control_is_seeded(subj, pairs):
    clean, _ = pairs
    eb = entity_batch(subj, clean)
    logits = subj.forward(list(eb.prompts))[:, -1]
    pred = logits.argmax(-1)
    circ = Circuit(groups={"A": ((2, 1), (2, 3)), "B": ((1, 0),)}, positions={"A": "last", "B": "query_label"})
    f = faithfulness(subj, list(eb.prompts), pred, circ, eb.positions, seeds=(0, 1, 2), chance=1 / 3)
    assert f.model_accuracy == 1.0 and len(f.random_accuracy) == 3
    # mean-ablating most heads of a random model must move some argmax
    assert min(f.random_accuracy + (f.circuit_accuracy,)) < 1.0
    r0, r0b = circ.random_like(3, 4, 0), circ.random_like(3, 4, 0)
    assert r0 == r0b and r0.size == circ.size and r0.positions == circ.positions
    assert circ.random_like(3, 4, 1) != r0 or circ.random_like(3, 4, 2) != r0


def test_circuit_value_and_results_roundtrip(tmp_path, subj, pairs):
    circ = Circuit(groups={"A": [(2, 1)], "C": [(0, 3), (1, 1)]}, positions={"A": "last", "C": "query_label"})
    assert circ.size == 3 and (0, 3, "query_label") in circ.heads
    assert Circuit.load(circ.save(tmp_path / "c")) == circ
    with pytest.raises(ValueError, match="position key"):
        Circuit(groups={"A": [(0, 0)]}, positions={})
    with pytest.raises(ValueError, match="unknown groups"):
        circ.only("Z")
    clean, _ = pairs
    eb = entity_batch(subj, clean)
    pred = subj.forward(list(eb.prompts))[:, -1].argmax(-1)
    f = faithfulness(subj, list(eb.prompts), pred, circ, eb.positions, seeds=(0,), chance=1 / 3)
    f2 = Faithfulness.load(f.save(tmp_path / "f"))
    assert f2 == f and len(f.to_frame()) == 2 and f.plot().data


def test_bad_inputs(subj, pairs):
    clean, _ = pairs
    eb = entity_batch(subj, clean)
    with pytest.raises(ValueError, match="Circuit"):
        faithfulness(subj, list(eb.prompts), eb.answers, [(0, 1)], eb.positions)
    circ = Circuit(groups={"A": [(2, 1)]}, positions={"A": "nowhere"})
    with pytest.raises(ValueError, match="nowhere"):
        faithfulness(subj, list(eb.prompts), eb.answers, circ, eb.positions)
    mixed = [clean[0], *__import__("tests.circuits.helpers", fromlist=["x"]).entity_pairs(1, 4)[0]]
    with pytest.raises(ValueError, match="different lengths"):
        entity_batch(subj, mixed)
