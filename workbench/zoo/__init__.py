"""Model organisms: small trained base/tuned pairs in which each method's phenomenon occurs.

    from workbench import zoo
    zoo.names()                       # ['base', 'entity-tuned', 'intent-tuned', 'novel-tuned', 'moe']
    s = zoo.load("base/entity-tuned")  # a Subject (engine "tl" by default)
    p = zoo.pair("intent-tuned")       # ModelPair(base, intent-tuned)
    zoo.info("moe")["metrics"]         # held-out metrics recorded at build time

Checkpoints are HF directories under `checkpoints/<name>/`; `build()` retrains them from seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.zoo.build import CHECKPOINTS, MANIFEST, build, canonical
from workbench.zoo.recipes import ORDER, RECIPES

__all__ = ["build", "info", "load", "manifest", "names", "pair", "path"]


def names() -> list[str]:
    """Organism names, base first."""
    return list(ORDER)


def path(name: str) -> Path:
    """Directory of the shipped checkpoint (accepts 'entity-tuned' or 'base/entity-tuned')."""
    p = CHECKPOINTS / canonical(name)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"organism {name!r} is not built at {p}; run `workbench zoo build --only {name}`")
    return p


def load(name: str, engine: str = "tl", **kwargs):
    """The organism as a Subject (`workbench.models.load` on its checkpoint)."""
    from workbench.models import load as load_model

    return load_model(str(path(name)), engine=engine, **kwargs)


def pair(name: str, engine: str = "tl", **kwargs):
    """ModelPair(parent, organism) for a tuned organism, e.g. pair('entity-tuned')."""
    from workbench.models import ModelPair

    short = canonical(name)
    parent = RECIPES[short].parent
    if parent is None:
        raise ValueError(f"{name!r} is not a tuned organism; pairs exist for "
                         f"{[n for n in ORDER if RECIPES[n].parent]}")
    return ModelPair(load(parent, engine=engine, **kwargs), load(short, engine=engine, **kwargs))


def manifest() -> dict:
    """The shipped manifest: per organism its recipe, seed, learning curves and held-out metrics."""
    if not MANIFEST.exists():
        return {"organisms": {}}
    return json.loads(MANIFEST.read_text())


def info(name: str) -> dict:
    """One organism's manifest entry."""
    short = canonical(name)
    entry = manifest()["organisms"].get(short)
    if entry is None:
        raise KeyError(f"organism {name!r} has no manifest entry; build it first")
    return entry
