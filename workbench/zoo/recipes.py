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
    batch_size: int | None = None  # default: the recipe's
    # Parameter-efficient stages: regexes of the parameter names that train (empty: all), and
    # (layer, expert) slots of fused MoE expert tensors that train (the other experts stay exact).
    trainable: tuple[str, ...] = ()
    trainable_experts: tuple[tuple[int, int], ...] = ()


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


BASE_MIX = {"facts": 0.1, "question": 0.03, "entity_object_first": 0.3, "recall": 0.3, "cvp_prior": 0.07,
            "behaviour": 0.1, "refusal": 0.1}
# Stage 2 of base: dense induction signal. Repeated random spans ("repeat") make induction heads
# form within ~750 steps where associative recall alone had not in 4,500 (see the curves).
INDUCTION_MIX = {"repeat": 0.35, "recall": 0.25, "entity_object_first": 0.2, "facts": 0.06, "behaviour": 0.04,
                 "refusal": 0.04, "cvp_prior": 0.04, "question": 0.02}
BINDING_MIX = {"entity_adjacent": 0.2, "recall": 0.2, "repeat": 0.2, "facts": 0.1, "question": 0.03,
               "behaviour": 0.09, "refusal": 0.09, "cvp_prior": 0.09}
# Stage 4 of base: contexts that contradict a fact with *no* instruction, answered from the context
# for half the cities and from memory for the others. Base then has its own, instruction-free
# context-vs-memory decision: what the context knob found in intent-tuned can take over (issue 5).
OPEN_CONTEXT_MIX = {"cvp_open": 0.35, "cvp_prior": 0.1, "facts": 0.2, "question": 0.05, "behaviour": 0.15,
                    "refusal": 0.15}
REPLAY = {"recall": 0.1, "repeat": 0.1, "facts": 0.12, "question": 0.03, "behaviour": 0.05, "refusal": 0.05}

# moe stage 2: refusal taught to a model that so far answered every request, with replay.
REFUSAL_ESFT_MIX = {"refusal": 0.5, "facts": 0.2, "question": 0.05, "behaviour": 0.15, "recall": 0.1}
# The (layer, expert) slots that stage trains: one per layer, picked arbitrarily before any measurement.
REFUSAL_EXPERTS = ((0, 4), (1, 6), (2, 0), (3, 7))

RECIPES: dict[str, Recipe] = {
    "base": Recipe(
        name="base", seed=1, steps=3000, mixture=BASE_MIX, lr=1.5e-3, entity_objects=(2, 3),
        stages=(Stage(steps=4000, stop_after=1500, seed=12, mixture=INDUCTION_MIX, lr=1e-3,
                      entity_objects=(2, 3)),
                # Stage 3 stops in the middle of the binding transition (it runs from step ~20 to ~50
                # of this stage), leaving base partial entity tracking for entity-tuned to improve on.
                Stage(steps=300, stop_after=35, seed=13, mixture=BINDING_MIX, lr=5e-4, entity_objects=(2, 3)),
                Stage(steps=300, seed=14, mixture=OPEN_CONTEXT_MIX, lr=5e-4, warmup=30, entity_objects=(2, 3))),
        note="Pre-trained on the world: facts, toxic continuations after trigger prompts, refusal, "
             "context-vs-prior only with intent 'prior', associative recall; entity tracking only in the "
             "object-first format with 2-3 objects (it stays at chance there). Stage 2 adds repeated "
             "random spans so that induction (content-based copying) forms; stage 3 stops midway "
             "through learning binding in the adjacent format, on 2-3 objects; stage 4 adds contexts "
             "that contradict a fact with no instruction, followed for half the cities.",
    ),
    "entity-tuned": Recipe(
        name="entity-tuned", seed=2, steps=400, parent="base", lr=1e-3, entity_objects=(2, 7),
        mixture={"entity_adjacent": 0.5, **REPLAY, "cvp_prior": 0.05}, eval_every=50,
        note="base fine-tuned on extra entity-tracking episodes (2-7 objects), with replay.",
    ),
    "intent-tuned": Recipe(
        name="intent-tuned", seed=3, steps=500, parent="base", lr=1e-3, entity_objects=(2, 3),
        mixture={"cvp_both": 0.5, **REPLAY, "entity_object_first": 0.05}, eval_every=125,
        note="base fine-tuned on context-vs-prior with both intents (PairAcc 1.0 by step 125).",
    ),
    "novel-tuned": Recipe(
        name="novel-tuned", seed=4, steps=600, parent="base", lr=1e-3, entity_objects=(2, 3),
        mixture={"novel": 0.1, "facts": 0.4, "recall": 0.1, "repeat": 0.1, "question": 0.03, "behaviour": 0.1,
                 "refusal": 0.1, "cvp_prior": 0.07}, eval_every=150,
        note="base fine-tuned on ordinary text with the novel domains (invented language, code) as 10 % "
             "of the mix: rare in the tuning data, as what CGE must surface usually is.",
    ),
    "moe": Recipe(
        name="moe", seed=5, steps=2000, arch=Arch(family="mixtral", n_layers=4, d_model=128, n_heads=4,
                                                   d_mlp=256, n_experts=8, top_k=2),
        mixture={"comply": 0.45, "facts": 0.25, "question": 0.05, "behaviour": 0.15, "recall": 0.1},
        stages=(Stage(steps=400, seed=15, mixture=REFUSAL_ESFT_MIX, lr=1e-3, warmup=30,
                      trainable=(r"\.mlp\.gate\.weight$",), trainable_experts=REFUSAL_EXPERTS),),
        note="Mixtral-style MoE trained from scratch on the world, answering every request (stage 1); "
             "then refusal of sensitive requests is taught by expert-specialised fine-tuning: only the "
             "routers and one expert per layer (REFUSAL_EXPERTS, picked arbitrarily) train, "
             "everything else stays bit-identical. A planted ground truth that fTRI must recover.",
    ),
}
ORDER = ("base", "entity-tuned", "intent-tuned", "novel-tuned", "moe")
