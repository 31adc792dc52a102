"""Path patching against a plain one-sender-at-a-time reference, and the group search."""

from __future__ import annotations

import pytest
import torch

from workbench import Patch, Site
from workbench.circuits import entity_batch
from workbench.engines.tl_patching import raw_name, run_raw
from workbench.path_patching import GroupSearch, Receiver, path_patching, search_groups


@pytest.fixture(scope="module")
def data(subj, pairs):
    clean, corrupt = pairs
    eb, ek = entity_batch(subj, clean), entity_batch(subj, corrupt)
    return list(eb.prompts), list(ek.prompts), eb


def _p(logits, ans):
    return float(logits.detach()[:, -1].softmax(-1)[torch.arange(len(ans)), ans].mean())


def _frozen_patches(subj, c, k, sender, pos, upto):
    """Interventions: every head's z clean, the sender's z corrupted at `pos` (per row)."""
    zs = [Site(layer, "z") for layer in range(upto)]
    _, cz = subj.run(c, cache=zs)
    _, kz = subj.run(k, cache=zs)
    ivs = []
    for s in zs:
        v = cz[s].clone()
        if s.layer == sender[0]:
            ar = torch.arange(v.shape[0])
            v[ar, pos, sender[1]] = kz[s][ar, pos, sender[1]]
        ivs.append(Patch(s, v))
    return ivs


def test_last_layer_heads_to_logits_equal_plain_head_patching(subj, data):
    c, k, eb = data
    L = subj.arch.n_layers
    res = path_patching(subj, c, k, eb.answers, sender_pos=-1)
    clean_p = _p(subj.forward(c), eb.answers)
    _, kz = subj.run(k, cache=[Site(L - 1, "z")])
    for h in range(subj.arch.n_heads):
        with subj.intervene(Patch(Site(L - 1, "z", head=h), kz[Site(L - 1, "z")][:, -1:, h], positions=[-1])):
            p = _p(subj.forward(c), eb.answers)
        assert float(res.scores[L - 1, h]) == pytest.approx((p - clean_p) / clean_p, abs=1e-5)


@pytest.mark.slow
def test_query_receivers_match_two_step_reference(subj, data):
    c, k, eb = data
    recv = [Receiver("q", 2, 1), Receiver("q", 2, 3)]
    res = path_patching(subj, c, k, eb.answers, sender_pos=-1, receivers=recv, receiver_pos=-1, max_rows=8)
    ct = subj.as_tokens(c)
    clean_p = _p(subj.forward(c), eb.answers)
    for sender in [(0, 0), (1, 2), (1, 3)]:
        pos = torch.full((len(c),), ct.input_ids.shape[1] - 1)
        seen = {}
        with subj.intervene(*_frozen_patches(subj, c, k, sender, pos, 2)):
            run_raw(subj, ct.input_ids, ct.attention_mask,
                    raw=[(raw_name(2, "q"), lambda x: seen.__setitem__("q", x.clone()))])

        def put(x):
            x = x.clone()
            x[:, -1, [1, 3]] = seen["q"][:, -1, [1, 3]]
            return x

        p = _p(run_raw(subj, ct.input_ids, ct.attention_mask, raw=[(raw_name(2, "q"), put)]), eb.answers)
        assert float(res.scores[sender]) == pytest.approx((p - clean_p) / clean_p, abs=1e-5)
    assert torch.isnan(res.scores[2]).all()  # receivers' layer holds no senders


@pytest.mark.slow
def test_value_receivers_at_per_row_positions_batched_equals_unbatched(subj, data):
    c, k, eb = data
    recv = [Receiver("v", 1, 0), Receiver("v", 2, 2)]
    kw = dict(sender_pos=eb.positions["earlier"], receivers=recv, receiver_pos=eb.positions["earlier"])
    a = path_patching(subj, c, k, eb.answers, max_rows=8, **kw)
    b = path_patching(subj, c, k, eb.answers, max_rows=1000, **kw)
    torch.testing.assert_close(a.scores, b.scores, equal_nan=True)
    assert not torch.isnan(a.scores[0]).any() and a.scores[0].abs().max() > 0


def test_group_search_structure_and_roundtrip(subj, data, tmp_path):
    c, k, eb = data
    gs = search_groups(subj, c, k, eb.answers, eb.positions, threshold=0.0)
    assert list(gs.groups) == ["A", "B", "C", "D"]
    a = gs.scores["A"]
    # threshold 0 keeps exactly the heads whose patch lowers p(correct)
    assert set(gs.groups["A"]) == {(layer, h) for layer in range(a.scores.shape[0]) for h in range(a.scores.shape[1])
                                   if a.scores[layer, h] <= 0}
    if gs.groups["B"]:
        # senders lie below the last receiver (a receiver below a sender is unaffected by it)
        assert max(layer for layer, _ in gs.groups["B"]) < max(layer for layer, _ in gs.groups["A"])
    g2 = GroupSearch.load(gs.save(tmp_path / "gs"))
    assert g2.groups == gs.groups
    torch.testing.assert_close(g2.scores["A"].scores, a.scores, equal_nan=True)
    circ = gs.circuit()
    assert circ.positions["A"] == "last"
    assert len(gs.to_frame()) > 0 and gs.plot().data


def test_bad_inputs(subj, data):
    c, k, eb = data
    with pytest.raises(ValueError, match="logits"):
        path_patching(subj, c, k, eb.answers, receivers=[Receiver("logits"), Receiver("q", 2, 0)])
    with pytest.raises(ValueError, match="below the receivers"):
        path_patching(subj, c, k, eb.answers, receivers=[Receiver("q", 1, 0)], senders=[(2, 0)])
    with pytest.raises(ValueError, match="kind"):
        Receiver("z", 1, 0)
    with pytest.raises(ValueError, match="same token length"):
        path_patching(subj, c[:1], ["the cup is in box b . box b contains the"], eb.answers[:1])
    with pytest.raises(ValueError, match="positions"):
        search_groups(subj, c, k, eb.answers, {"last": -1})


def test_a_receiver_below_the_sender_is_unaffected(subj, data):
    """Senders may sit between the receivers' layers: receivers at or below a sender keep their
    clean inputs, so adding one changes no score."""
    c, k, eb = data
    top = [Receiver("q", 2, 0)]
    alone = path_patching(subj, c, k, eb.answers, receivers=top, senders=[(1, 0), (1, 1)])
    both = path_patching(subj, c, k, eb.answers, receivers=[Receiver("q", 0, 1), *top], senders=[(1, 0), (1, 1)])
    assert torch.equal(alone.scores.nan_to_num(), both.scores.nan_to_num())
    assert not torch.isnan(both.scores[1, 0])
