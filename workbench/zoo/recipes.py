"""Recipes: architecture, data mixture, steps and seed of every organism (the build's single truth)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class Arch:
    family: Literal["llama", "mixtral"] = "llama"
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 256
    n_experts: int = 0
    top_k: int = 0

    def __post_init__(self):
        if self.family == "mixtral" and not (self.n_experts >= 2 and 1 <= self.top_k <= self.n_experts):
            raise ValueError("a mixtral arch needs n_experts >= 2 and 1 <= top_k <= n_experts")


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A further training stage (fresh optimizer and data stream) after a recipe's first one."""

    steps: int
    seed: int
    mixture: dict[str, float]
    lr: float = 1e-3
    warmup: int = 50
    entity_objects: tuple[int, int] = (2, 7)
    stop_after: int | None = None  # stop early on the `steps`-long schedule


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    seed: int
    steps: int
    mixture: dict[str, float]
    arch: Arch = field(default_factory=Arch)
    parent: str | None = None  # fine-tune from this organism instead of a fresh init
    lr: float = 1e-3
    batch_size: int = 32
    warmup: int = 100
    entity_objects: tuple[int, int] = (2, 7)
    eval_every: int = 250
    stop_after: int | None = None  # stop early on the `steps`-long schedule
    stages: tuple[Stage, ...] = ()  # a curriculum: run in order after the first stage
    note: str = ""

    def reduced(self, factor: float = 0.5) -> "Recipe":
        """The same recipe with fewer steps (for the slow rebuild test)."""
        def cut(n: int | None) -> int | None:
            return None if n is None else max(1, int(n * factor))

        stages = tuple(Stage(**{**asdict(s), "steps": cut(s.steps), "stop_after": cut(s.stop_after)})
                       for s in self.stages)
        d = {**{f: getattr(self, f) for f in self.__dataclass_fields__}, "stages": stages}
        d["steps"], d["stop_after"] = cut(self.steps), cut(self.stop_after)
        return Recipe(**d)


BASE_MIX = {"facts": 0.1, "question": 0.03, "entity": 0.3, "recall": 0.3, "cvp_prior": 0.07,
            "behaviour": 0.1, "refusal": 0.1}

RECIPES: dict[str, Recipe] = {
    "base": Recipe(
        name="base", seed=1, steps=3000, mixture=BASE_MIX, lr=1.5e-3, entity_objects=(2, 3),
        note="Pre-trained on the world; binding episodes have only 2-3 objects (evaluation uses 2-7), "
             "context-vs-prior only with intent 'prior'.",
    ),
    "entity-tuned": Recipe(
        name="entity-tuned", seed=2, steps=1500, parent="base", lr=5e-4, entity_objects=(2, 7),
        mixture={"entity": 0.6, "recall": 0.1, "facts": 0.15, "question": 0.05, "behaviour": 0.05,
                 "refusal": 0.05},
        note="base fine-tuned on extra entity-tracking episodes with 2-7 objects, with replay.",
    ),
    "intent-tuned": Recipe(
        name="intent-tuned", seed=3, steps=1500, parent="base", lr=5e-4,
        mixture={"cvp_both": 0.6, "recall": 0.1, "facts": 0.15, "question": 0.05, "behaviour": 0.05,
                 "refusal": 0.05},
        note="base fine-tuned on context-vs-prior with both intents.",
    ),
    "novel-tuned": Recipe(
        name="novel-tuned", seed=4, steps=600, parent="base", lr=5e-4,
        mixture={"novel": 0.5, "facts": 0.15, "entity": 0.1, "recall": 0.1, "behaviour": 0.075,
                 "refusal": 0.075},
        entity_objects=(2, 3),
        note="base fine-tuned on ordinary text mixed with the novel domains (invented language, code).",
    ),
    "moe": Recipe(
        name="moe", seed=5, steps=2000, arch=Arch(family="mixtral", n_layers=4, d_model=128, n_heads=4,
                                                   d_mlp=256, n_experts=8, top_k=2),
        mixture={"refusal": 0.45, "facts": 0.25, "question": 0.05, "behaviour": 0.15, "recall": 0.1},
        note="Mixtral-style MoE trained from scratch on the world with the refusal behaviour.",
    ),
}
ORDER = ("base", "entity-tuned", "intent-tuned", "novel-tuned", "moe")
