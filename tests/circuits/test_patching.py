"""Batched activation patching equals TransformerLens's own sweeps; attribution is the true gradient."""

from __future__ import annotations

import pytest
import torch

from workbench import Patch, Site
from workbench.circuits import entity_batch
from workbench.engines.tl_patching import tl_act_patch
from workbench.patching import (
    Accuracy,
    LogitDiff,
    PatchingSweep,
    ProbCorrect,
    activation_patching,
    attribution_patching,
    rank_agreement,
)


@pytest.fixture(scope="module")
def setup(subj, pairs):
    clean, corrupt = pairs
    eb, ek = entity_batch(subj, clean), entity_batch(subj, corrupt)
    c_ids, k_ids = subj.tokenize(list(eb.prompts)).input_ids, subj.tokenize(list(ek.prompts)).input_ids
    return c_ids, k_ids, LogitDiff(eb.answers, ek.answers), eb


@pytest.mark.parametrize("component,per_position", [("resid_pre", True), ("resid_mid", True), ("attn_out", True),
                                                    ("mlp_out", True), ("z", True), ("z", False)])
def test_equals_transformer_lens(subj, setup, component, per_position):
    c, k, metric, _ = setup
    ours = activation_patching(subj, c, k, metric, component=component, per_position=per_position, max_rows=64)
    ref = tl_act_patch(subj, component, c, k, metric, by_pos=per_position)
    assert ours.values.shape == ref.shape
    torch.testing.assert_close(ours.values, ref.float(), atol=1e-5, rtol=1e-4)
    assert ours.effect.abs().max() > 1e-4  # the sweep is not trivially flat


def test_shared_prefix_cells_are_skipped_but_still_exact(subj, setup):
    c, _, _, eb = setup
    # Corrupt only the query label (the last token): every cell before it is identical and is not run.
    q = int(eb.positions["query_label"][0])
    k = c.clone()
    k[:, q] = c[[1, 2, 3, 4, 5, 6, 7, 0], q]
    assert not torch.equal(k, c)
    metric = ProbCorrect(eb.answers)
    ours = activation_patching(subj, c, k, metric, component="resid_pre")
    ref = tl_act_patch(subj, "resid_pre", c, k, metric)
    torch.testing.assert_close(ours.values, ref.float(), atol=1e-6, rtol=1e-4)
    L, P = ours.values.shape
    assert ours.n_cells_run == 1 + (L - 1) * (P - q) < L * P

def test_batching_does_not_change_numbers(subj, setup):
    c, k, metric, _ = setup
    a = activation_patching(subj, c, k, metric, component="z", max_rows=8)
    b = activation_patching(subj, c, k, metric, component="z", max_rows=10_000)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)


def test_attribution_is_the_directional_derivative(subj, setup):
    """metric(corrupt + eps*(clean-corrupt) at one cell) - metric(corrupt) ~ eps * attribution effect."""
    c, k, metric, _ = setup
    attr = attribution_patching(subj, c, k, metric, component="z")
    _, cc = subj.run(c, cache=[Site(1, "z")])
    _, kc = subj.run(k, cache=[Site(1, "z")])
    eps = 1e-3
    for pos, head in [(-1, 0), (-1, 2), (-3, 1)]:
        p = pos % c.shape[1]
        v = kc[Site(1, "z")][:, p, head] + eps * (cc[Site(1, "z")][:, p, head] - kc[Site(1, "z")][:, p, head])
        with subj.intervene(Patch(Site(1, "z", head=head), v[:, None], positions=[p])):
            moved = float(metric(subj.forward(k)))
        fd = (moved - attr.corrupt_value) / eps
        assert fd == pytest.approx(float(attr.effect[1, p, head]), rel=0.05, abs=1e-3)


def test_attribution_shapes_and_agreement_api(subj, setup):
    c, k, metric, _ = setup
    ex = activation_patching(subj, c, k, metric, component="resid_pre")
    at = attribution_patching(subj, c, k, metric, component="resid_pre")
    assert at.values.shape == ex.values.shape and at.method == "attribution"
    assert at.clean_value == pytest.approx(ex.clean_value) and at.corrupt_value == pytest.approx(ex.corrupt_value)
    # Layer 0, at the inputs, the linear estimate of a residual patch is close to exact for small models.
    assert -1.0 <= rank_agreement(ex, at) <= 1.0
    with pytest.raises(ValueError, match="shape"):
        rank_agreement(ex, attribution_patching(subj, c, k, metric, component="z"))


def test_accuracy_metric_and_lambda_metric(subj, setup):
    c, k, _, eb = setup
    acc = activation_patching(subj, c, k, Accuracy(eb.answers), component="attn_out")
    assert set(acc.values.unique().tolist()) <= {i / 8 for i in range(9)}
    ref = tl_act_patch(subj, "attn_out", c, k, lambda lg: lg[:, -1, 5].mean())
    ours = activation_patching(subj, c, k, lambda lg: lg[:, -1, 5].mean(), component="attn_out")
    torch.testing.assert_close(ours.values, ref.float(), atol=1e-5, rtol=1e-4)


def test_bad_inputs_are_clear(subj, setup):
    c, k, metric, _ = setup
    with pytest.raises(ValueError, match="same token length"):
        activation_patching(subj, ["the cup is in box b . box b contains the"],
                            ["the cup is in box b , the pen is in box c . box b contains the"], metric)
    with pytest.raises(ValueError, match="scalar"):
        activation_patching(subj, c, k, lambda lg: lg[:, -1, 0], component="attn_out")
    with pytest.raises(ValueError, match="scalar"):
        attribution_patching(subj, c, k, lambda lg: lg[:, -1, 0])
    with pytest.raises(ValueError, match="component"):
        activation_patching(subj, c, k, metric, component="pattern")
    with pytest.raises(ValueError, match="pairs"):
        activation_patching(subj, c, k[:3], metric)


def test_result_roundtrip_frame_and_plot(subj, setup, tmp_path):
    c, k, metric, _ = setup
    r = activation_patching(subj, c, k, metric, component="z")
    df = r.to_frame()
    assert set(df.columns) >= {"layer", "pos", "head", "value", "normalized", "token"}
    assert len(df) == r.values.numel()
    r2 = PatchingSweep.load(r.save(tmp_path / "sweep"))
    torch.testing.assert_close(r2.values, r.values)
    assert r2.labels == r.labels and r2.axes == r.axes
    assert r.plot("layer_head").data and r.plot("layer_pos").data
