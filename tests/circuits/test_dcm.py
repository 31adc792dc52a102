"""DCM desiderata are built right; the mask search runs, rounds and saves."""

from __future__ import annotations

import pytest
import torch

from tests.circuits.helpers import entity_pairs
from workbench.dcm import DCMResult, dcm, entity_desideratum


@pytest.mark.parametrize("kind", ["position", "object", "label"])
def test_desiderata(subj, kind):
    clean, _ = entity_pairs(6, 4)
    base, cf, tgt = entity_desideratum(clean, kind, seed=0)
    assert base == [e.prompt for e in clean]
    lens = {len(subj.tokenizer(p)["input_ids"]) for p in base + cf}
    assert len(lens) == 1  # counterfactuals align position by position
    for e, c, t in zip(clean, cf, tgt, strict=True):
        objs, labs, i = e.meta["objects"], e.meta["labels"], e.meta["query_index"]
        ctx, q = c.split(" . ")
        pairs = [dict(zip(("label", "object"), _segment(sg, e.meta["format"]), strict=True)) for sg in ctx.split(" , ")]
        q = q.split()[1]
        k = [p["label"] for p in pairs].index(q)
        assert k != i
        if kind == "position":
            assert t == objs[k] and q not in labs
        elif kind == "object":
            assert t == pairs[k]["object"] and t not in objs
        else:
            j = labs.index(q)
            assert t == objs[j] and j not in (i, k)


def _segment(seg: str, fmt: str) -> tuple[str, str]:
    w = seg.split()
    return (w[5], w[1]) if fmt == "object_first" else (w[1], w[-1])

def test_dcm_runs_and_keeps_best_rounded_mask(subj, tmp_path):
    clean, _ = entity_pairs(10, 3)
    base, cf, tgt = entity_desideratum(clean, "position")
    heads = [(2, 0), (2, 1), (2, 2), (2, 3)]
    r = dcm(subj, base, cf, tgt, heads, -1, desideratum="position", epochs=4, seeds=(0, 1))
    assert set(r.mask.tolist()) <= {0.0, 1.0} and len(r.history) == 4
    assert r.val_accuracy == max(h[2] for h in r.history)
    assert set(r.selected) == {hd for hd, m in zip(heads, r.mask.tolist(), strict=True) if m == 0}
    assert len(r.random_accuracy) == 2
    r2 = DCMResult.load(r.save(tmp_path / "d"))
    torch.testing.assert_close(r2.mask, r.mask)
    assert r2.selected == r.selected and r.plot().data


def test_bad_inputs(subj):
    clean, _ = entity_pairs(4, 2)
    with pytest.raises(ValueError, match="at least 3"):
        entity_desideratum(clean, "label")
    with pytest.raises(ValueError, match="kind"):
        entity_desideratum(clean, "colour")
    c3, _ = entity_pairs(4, 3)
    b, cf, t = entity_desideratum(c3, "position")
    with pytest.raises(ValueError, match="heads"):
        dcm(subj, b, cf, t, [], -1)
    with pytest.raises(ValueError, match="targets"):
        dcm(subj, b, cf, t[:2], [(0, 0)], -1)
