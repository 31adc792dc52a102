"""ProjectionSteer: the knob as an Edit, active on the prompt pass and every KV-cached decoding step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edits.base import Edit
from edits.steer import ProjectionSteer
from tests.tiny import tiny_subject
from workbench.interventions import SetProjection
from workbench.sites import Site

PROMPTS = ["where is paris ? paris is in", "the big dog and the small cat"]


@pytest.fixture(scope="module")
def subject():
    return tiny_subject("llama")


def _edit(subject, value=6.0, layer=1):
    return ProjectionSteer(site=Site(layer, "resid_post"),
                           direction=torch.randn(subject.arch.d_model, generator=torch.Generator().manual_seed(3)),
                           value=value, model_id=subject.identity())


@torch.no_grad()
def test_same_as_the_core_intervention_and_sets_the_projection(subject):
    e = _edit(subject)
    with subject.intervene(SetProjection(e.site, e.direction, e.value, positions=-1)):
        ref = subject.forward(PROMPTS)
    plain = subject.forward(PROMPTS)
    with e.applied(subject):
        got = subject.forward(PROMPTS)
        _, cache = subject.run(PROMPTS, cache=[e.site])
    assert torch.equal(got, ref)
    assert (got - plain).abs().max() > 1e-3  # it does something
    proj = cache[e.site] @ e.direction
    assert torch.allclose(proj[:, -1], torch.full((len(PROMPTS),), e.value), atol=1e-4)
    # only the last position is set
    assert not torch.allclose(proj[:, -2], torch.full((len(PROMPTS),), e.value), atol=1e-2)
    assert torch.equal(subject.forward(PROMPTS), plain)  # reverted exactly


@torch.no_grad()
def _greedy_uncached(subject, prompt: str, n: int, steer_positions) -> list[int]:
    """Reference decoding without a KV cache: re-run the whole sequence each step."""
    ids = subject.tokenize(prompt).input_ids
    out = []
    for _ in range(n):
        P = ids.shape[1]
        ivs = steer_positions(P)
        with subject.intervene(*ivs):
            nxt = subject.forward(ids)[0, -1].argmax()
        out.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], 1)
    return out


def test_steering_stays_on_at_every_cached_decoding_step(subject):
    e = _edit(subject, value=8.0)
    prompt, n = PROMPTS[0], 8
    P0 = subject.tokenize(prompt).input_ids.shape[1]
    decode = lambda ids: subject.tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    # cached step t computes position P0-1+t with the edit on; earlier positions were steered when they were last
    every_step = _greedy_uncached(subject, prompt, n,
                                  lambda P: [SetProjection(e.site, e.direction, e.value, positions=list(range(P0 - 1, P)))])
    prompt_only = _greedy_uncached(subject, prompt, n,
                                   lambda P: [SetProjection(e.site, e.direction, e.value, positions=P0 - 1)])
    assert every_step != prompt_only, "the test prompt must distinguish 'every step' from 'prompt only'"
    with e.applied(subject):
        cached = subject.generate(prompt, max_new_tokens=n, stop_at_eos=False)[0]
    assert cached == decode(every_step)
    assert cached != decode(prompt_only)


def test_save_load_equal(subject, tmp_path):
    e = _edit(subject)
    e.save(tmp_path / "e")
    back = Edit.load(tmp_path / "e")
    assert back == e and isinstance(back, ProjectionSteer) and back.site == e.site
    with torch.no_grad(), e.applied(subject):
        a = subject.forward(PROMPTS)
    with torch.no_grad(), back.applied(subject):
        b = subject.forward(PROMPTS)
    assert torch.equal(a, b)


def test_from_knob_picks_the_constant():
    knob = type("K", (), {"site": Site(1, "resid_post"), "direction": torch.tensor([3.0, 4.0]), "c_ctx": -2.0,
                          "c_prior": 5.0})()
    c, p = ProjectionSteer.from_knob(knob, "context"), ProjectionSteer.from_knob(knob, "prior")
    assert (c.value, p.value) == (-2.0, 5.0)
    assert torch.allclose(c.direction, torch.tensor([0.6, 0.8]))
    with pytest.raises(ValueError, match="intent"):
        ProjectionSteer.from_knob(knob, "both")


def test_bad_input(subject):
    with pytest.raises(ValueError, match="zero norm"):
        ProjectionSteer(site=Site(1, "resid_post"), direction=torch.zeros(subject.arch.d_model), value=1.0)
    with pytest.raises(ValueError, match="d_model-wide"):
        ProjectionSteer(site=Site(1, "z"), direction=torch.ones(4), value=1.0)
    with pytest.raises(ValueError, match="finite"):
        ProjectionSteer(site=Site(1, "resid_post"), direction=torch.ones(4), value=float("nan"))
    wrong = ProjectionSteer(site=Site(1, "resid_post"), direction=torch.ones(subject.arch.d_model + 1), value=1.0)
    with pytest.raises(ValueError, match="d_model"):
        wrong.apply(subject)
    far = dataclasses.replace(_edit(subject), site=Site(subject.arch.n_layers + 3, "resid_post"))
    with pytest.raises(ValueError, match="out of range"):
        far.apply(subject)
    assert subject.active == ()
