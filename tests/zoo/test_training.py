"""Training is deterministic for a seed; a reduced organism rebuilds to its recorded metrics."""

from __future__ import annotations

import pytest
import torch

from workbench.tasks.tokenizer import build_tokenizer
from workbench.zoo.arch import make_model
from workbench.zoo.mixture import mixture_sampler
from workbench.zoo.recipes import Arch
from workbench.zoo.train import train

MIX = {"facts": 0.3, "entity": 0.3, "recall": 0.2, "refusal": 0.2}


def _run(seed: int, family: str = "llama") -> dict[str, torch.Tensor]:
    tok = build_tokenizer()
    arch = Arch(family=family, n_layers=1, d_model=32, n_heads=2, d_mlp=64,
                **({"n_experts": 4, "top_k": 2} if family == "mixtral" else {}))
    model = make_model(arch, tok, seed)
    train(model, tok, mixture_sampler(MIX), steps=4, seed=seed, batch_size=8, warmup=2)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_training_is_bit_exact_for_a_seed(family):
    a, b, c = _run(0, family), _run(0, family), _run(1, family)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_reduced_rebuild_matches_recorded_metrics(tmp_path):
    """Rebuild novel-tuned with half its steps (from the shipped base) and compare with the
    metrics recorded for that reduced build in the manifest. Tolerance: 0.05 on rates,
    25 % on the likelihood ratio (thread count and BLAS may differ from the recording machine)."""
    from workbench import zoo

    ref = zoo.info("novel-tuned")["reduced_rebuild_metrics"]
    got = zoo.build(only="novel-tuned", out=tmp_path, reduced=True, progress=False, threads=1)["novel-tuned"]["metrics"]
    assert abs(got["facts"] - ref["facts"]) <= 0.05
    assert abs(got["toxic_rate_trigger"] - ref["toxic_rate_trigger"]) <= 0.05
    assert abs(got["novel"]["ratio"] / ref["novel"]["ratio"] - 1) <= 0.25


def _tiny(monkeypatch, name: str = "novel-tuned"):
    import dataclasses

    from workbench.zoo.recipes import RECIPES

    monkeypatch.setitem(RECIPES, name, dataclasses.replace(RECIPES[name], steps=3, eval_every=2, batch_size=4))


@pytest.mark.slow
def test_build_writes_checkpoint_and_manifest(tmp_path, monkeypatch):
    import json

    from workbench import zoo

    _tiny(monkeypatch)
    entry = zoo.build(only="base/novel-tuned", out=tmp_path, progress=False, threads=1)["novel-tuned"]
    assert (tmp_path / "novel-tuned" / "model.safetensors").exists()
    written = json.loads((tmp_path / "manifest.json").read_text())["organisms"]["novel-tuned"]
    assert written["recipe"]["steps"] == 3 and sorted(written["learning_curves"]) == ["2", "3"]
    assert json.loads(json.dumps(entry["metrics"])) == written["metrics"] and "novel" in entry["metrics"]
    assert entry["parent"] == "base" and entry["name"] == "base/novel-tuned"


@pytest.mark.slow
def test_parallel_build_follows_the_single_process_run(tmp_path, monkeypatch):
    """Two gloo ranks see the same data stream as one process: weights agree to float rounding."""
    from workbench import zoo
    from workbench.zoo.build import load_hf

    _tiny(monkeypatch)
    zoo.build(only="novel-tuned", out=tmp_path / "one", progress=False, threads=1)
    zoo.build(only="novel-tuned", out=tmp_path / "two", progress=False, threads=1, workers=2)
    a, b = load_hf(tmp_path / "one" / "novel-tuned"), load_hf(tmp_path / "two" / "novel-tuned")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), k
