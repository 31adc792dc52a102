"""The zoo's public functions: names, paths, manifest, and lazy loading through workbench.models."""

from __future__ import annotations

import pytest

from workbench import zoo


def test_names_and_canonical_paths():
    assert zoo.names() == ["base", "entity-tuned", "intent-tuned", "novel-tuned", "moe"]
    assert zoo.path("base/entity-tuned") == zoo.path("entity-tuned")
    assert zoo.path("moe").name == "moe"
    with pytest.raises(ValueError, match="unknown organism"):
        zoo.path("gpt2")


def test_checkpoints_are_standard_and_small():
    total = 0
    for name in zoo.names():
        d = zoo.path(name)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (d / f).exists(), f"{name}: missing {f}"
        total += sum(f.stat().st_size for f in d.iterdir())
    assert total < 60e6


def test_manifest_records_recipe_curves_and_metrics():
    m = zoo.manifest()["organisms"]
    assert list(m) == zoo.names()
    for name, entry in m.items():
        assert entry["seed"] == entry["recipe"]["seed"]
        assert entry["learning_curves"], name
        assert entry["metrics"]["facts"] >= 0.0
        assert zoo.info(name) == entry
    assert zoo.info("base/intent-tuned")["parent"] == "base"


def test_load_and_pair_go_through_workbench_models(monkeypatch):
    import workbench.models as models

    calls = []
    monkeypatch.setattr(models, "load", lambda p, engine="tl", **kw: calls.append((p, engine)) or p)
    monkeypatch.setattr(models, "ModelPair", lambda b, t: ("pair", b, t))
    assert zoo.load("moe", engine="nnsight") == str(zoo.path("moe"))
    assert calls[-1] == (str(zoo.path("moe")), "nnsight")
    assert zoo.pair("base/entity-tuned") == ("pair", str(zoo.path("base")), str(zoo.path("entity-tuned")))
    with pytest.raises(ValueError, match="not a tuned organism"):
        zoo.pair("moe")
