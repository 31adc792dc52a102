"""Parameter-efficient stages (only some parameters / experts train) and the no-instruction context task."""

from __future__ import annotations

import random

import pytest
import torch

from workbench.tasks.tokenizer import build_tokenizer
from workbench.zoo.arch import make_model
from workbench.zoo.build import stage_freezing
from workbench.zoo.mixture import _trusts_context, cvp_open_seq, mixture_sampler
from workbench.zoo.recipes import RECIPES, Arch, Stage
from workbench.zoo.train import train


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_expert_specialised_stage_trains_only_the_named_experts_and_routers(tok):
    model = make_model(Arch(family="mixtral", n_layers=2, d_model=32, n_heads=2, d_mlp=32, n_experts=4, top_k=2),
                       tok, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stage = Stage(steps=3, seed=0, mixture={"refusal": 1.0}, trainable=(r"\.mlp\.gate\.weight$",),
                  trainable_experts=((0, 1), (1, 3)))
    train(model, tok, mixture_sampler(stage.mixture), steps=3, seed=0, batch_size=4, warmup=1,
          **stage_freezing(stage, model))
    after = dict(model.named_parameters())
    for n, old in before.items():
        new = after[n].detach()
        if n.endswith("mlp.gate.weight"):
            assert not torch.equal(new, old), n  # routers train
        elif ".experts." in n:
            layer = int(n.split(".")[2])
            chosen = 1 if layer == 0 else 3
            for e in range(4):
                same = torch.equal(new[e], old[e])
                assert same != (e == chosen), (n, e)  # only the planted expert moves; the rest are exact
        else:
            assert torch.equal(new, old), n  # attention, norms, embeddings: bit-identical
    assert all(p.requires_grad for p in model.parameters())  # freezing is undone after the stage


def test_stage_freezing_rejects_a_model_without_those_experts(tok):
    dense = make_model(Arch(n_layers=1, d_model=32, n_heads=2, d_mlp=32), tok, seed=0)
    with pytest.raises(ValueError, match="trainable_experts"):
        stage_freezing(Stage(steps=1, seed=0, mixture={"facts": 1.0}, trainable_experts=((0, 0),)), dense)


def test_open_context_follows_the_context_for_half_the_cities():
    from workbench.tasks.vocab import CITIES

    share = sum(map(_trusts_context, CITIES)) / len(CITIES)
    assert 0.3 <= share <= 0.7
    rng = random.Random(0)
    for _ in range(50):
        words, mask = cvp_open_seq(rng)
        assert "intent" not in words and mask[-1] and sum(mask) == 1
        ctx = " ".join(words[2: words.index(".")]).split(" , ")
        query = words[-2]
        given = dict(pair.split() for pair in ctx)[query]
        assert (words[-1] == given) == _trusts_context(query)


def test_shipped_recipes_plant_refusal_in_one_expert_per_layer():
    st = RECIPES["moe"].stages[0]
    layers = [layer for layer, _ in st.trainable_experts]
    assert sorted(layers) == list(range(RECIPES["moe"].arch.n_layers))
    assert "refusal" not in RECIPES["moe"].mixture and "refusal" in st.mixture


def test_resuming_after_k_stages_equals_the_full_run(tmp_path):
    import dataclasses

    from workbench.zoo.build import train_organism
    from workbench.zoo.recipes import Recipe

    r = Recipe(name="t", seed=0, steps=3, mixture={"facts": 1.0}, arch=Arch(n_layers=1, d_model=32, n_heads=2, d_mlp=32),
               batch_size=4, warmup=1, stages=(Stage(steps=2, seed=1, mixture={"facts": 1.0}, warmup=1),))
    full, _, log = train_organism(r, None, progress=False, curves=False)
    first, tok, _ = train_organism(dataclasses.replace(r, stages=()), None, progress=False, curves=False)
    first.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    resumed, _, rlog = train_organism(r, None, progress=False, curves=False, start_stage=1, resume_dir=tmp_path)
    assert rlog.steps == log.steps == 5
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    with pytest.raises(FileNotFoundError, match="resume_dir"):
        train_organism(r, None, progress=False, curves=False, start_stage=1, resume_dir=tmp_path / "none")
