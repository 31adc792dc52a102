"""Circuits as values, the entity-tracking inputs they are read on, and faithfulness.

A `Circuit` is a set of head groups, each read at one named position ('last', 'query_label',
'earlier', ...). Faithfulness (Prakash et al. 2024) = circuit accuracy / model accuracy, where
every head outside the circuit, and every circuit head away from its group's position, is
mean-ablated per position (the mean over the evaluation prompts at that position). The control
is a random circuit of the same size with the same positions, over several seeds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from workbench.patching import answer_ids
from workbench.path_patching import positions_tensor
from workbench.results import Result
from workbench.sites import Site

Head = tuple[int, int]


@dataclass(frozen=True)
class Circuit(Result):
    """`groups`: name -> heads ((layer, head), ...); `positions`: name -> position key."""

    groups: dict
    positions: dict

    def __post_init__(self):
        if set(self.groups) != set(self.positions):
            raise ValueError(f"Circuit.positions: expected a position key for every group {sorted(self.groups)}, "
                             f"got {sorted(self.positions)}")
        norm = {g: tuple((int(layer), int(h)) for layer, h in hs) for g, hs in self.groups.items()}
        object.__setattr__(self, "groups", norm)

    @property
    def heads(self) -> list[tuple[int, int, str]]:
        """(layer, head, position key) for every head of every group."""
        return [(layer, h, self.positions[g]) for g, hs in self.groups.items() for layer, h in hs]

    @property
    def size(self) -> int:
        return len(self.heads)

    def only(self, *names: str) -> Circuit:
        unknown = [n for n in names if n not in self.groups]
        if unknown:
            raise ValueError(f"names: unknown groups {unknown}; this circuit has {list(self.groups)}")
        return Circuit(groups={n: self.groups[n] for n in names}, positions={n: self.positions[n] for n in names})

    def random_like(self, n_layers: int, n_heads: int, seed: int) -> Circuit:
        """Same group sizes and positions, heads drawn at random (the control). Like a searched
        circuit, a head appears at most once per position (it may recur at another position)."""
        rng = random.Random(seed)
        every = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        used: dict[str, set] = {}
        groups = {}
        for g, hs in self.groups.items():
            taken = used.setdefault(self.positions[g], set())
            free = [hd for hd in every if hd not in taken]
            if len(hs) > len(free):
                raise ValueError(f"group {g}: {len(hs)} heads at position {self.positions[g]!r}, but only "
                                 f"{len(free)} heads are not already used there")
            groups[g] = tuple(rng.sample(free, len(hs)))
            taken.update(groups[g])
        return Circuit(groups=groups, positions=dict(self.positions))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"group": g, "layer": layer, "head": h, "position": self.positions[g]}
                             for g, hs in self.groups.items() for layer, h in hs])

    def plot(self):
        import plotly.express as px

        df = self.to_frame()
        return px.scatter(df, x="head", y="layer", color="group", symbol="position", title="circuit heads")


# --- entity-tracking inputs -----------------------------------------------------------------
@dataclass(frozen=True)
class EntityBatch:
    """Prompts of one episode size, their answers and the key positions (per row)."""

    prompts: tuple[str, ...]
    answers: Tensor
    positions: dict


def entity_batch(subject, examples: Sequence[Any]) -> EntityBatch:
    """Key positions of `workbench.tasks.entity_tracking` examples (any of its formats): 'last',
    'query_label' (the label in the question), 'earlier' (its mention in the context) and
    'object' (the answer's mention)."""
    if not examples:
        raise ValueError("examples: expected at least one entity-tracking example")
    toks = subject.tokenize([e.prompt for e in examples])
    if not bool(toks.attention_mask.all()):
        raise ValueError("examples: prompts tokenize to different lengths; use one n_objects per batch")
    P = toks.input_ids.shape[1]
    ids = toks.input_ids
    # Offset of the object from its label inside one 'box L O' / 'box L contains the O' / 'the O is in box L'.
    offset = {"adjacent": 1, "label_first": 3, "object_first": -4}
    query, earlier, obj = [], [], []
    for i, e in enumerate(examples):
        label = subject.tokenizer.convert_tokens_to_ids(e.meta["query_label"])
        hits = (ids[i] == label).nonzero().flatten().tolist()
        if len(hits) != 2:
            raise ValueError(f"examples[{i}]: expected the query label once in the context and once in the "
                             f"question, found it {len(hits)} times")
        earlier.append(hits[0])
        query.append(hits[1])
        obj.append(hits[0] + offset[e.meta.get("format", "object_first")])
    pos = {"last": torch.full((len(examples),), P - 1), "query_label": torch.tensor(query),
           "earlier": torch.tensor(earlier), "object": torch.tensor(obj)}
    return EntityBatch(tuple(e.prompt for e in examples), answer_ids(subject, [e.target for e in examples]), pos)


# --- ablation hooks and accuracy ---------------------------------------------------------------
@torch.no_grad()
def mean_z(subject, prompts: Any) -> dict[int, Tensor]:
    """Per-layer mean head output per position, `pos head d_head`, over equal-length prompts."""
    toks = subject.as_tokens(prompts)
    if not bool(toks.attention_mask.all()):
        raise ValueError("prompts: mean ablation per position needs prompts of one token length")
    _, cache = subject.run(toks, cache=[Site(layer, "z") for layer in range(subject.arch.n_layers)])
    return {s.layer: v.mean(0) for s, v in cache.items()}


def keep_mask(circuit: Circuit, positions: dict, B: int, P: int, n_layers: int, n_heads: int) -> Tensor:
    """`layer batch pos head` bool: True where a circuit head is read at its group's position."""
    keep = torch.zeros(n_layers, B, P, n_heads, dtype=torch.bool)
    ar = torch.arange(B)
    for layer, h, key in circuit.heads:
        if key not in positions:
            raise ValueError(f"positions: no {key!r} positions for the circuit; have {sorted(positions)}")
        keep[layer, ar, positions_tensor(positions[key], B, P, key), h] = True
    return keep


def ablation_hooks(circuit: Circuit, positions: dict, means: dict[int, Tensor], B: int, P: int, arch):
    keep = keep_mask(circuit, positions, B, P, arch.n_layers, arch.n_heads)

    def fn(x, layer):
        k = keep[layer].to(x.device)[..., None]
        return torch.where(k, x, means[layer].to(x.dtype)[None])

    return [(Site(layer, "z"), lambda x, layer=layer: fn(x, layer)) for layer in range(arch.n_layers)]


@torch.no_grad()
def accuracy(subject, prompts: Any, answers: Tensor, hooks=()) -> float:
    logits, _ = subject.run(subject.as_tokens(prompts), hooks=list(hooks))
    return float((logits[:, -1].argmax(-1) == answers).float().mean())


@dataclass(frozen=True)
class Faithfulness(Result):
    model: str
    model_accuracy: float
    circuit_accuracy: float
    faithfulness: float
    circuit_size: int
    random_accuracy: tuple[float, ...]
    random_faithfulness: tuple[float, ...]
    chance: float

    def to_frame(self) -> pd.DataFrame:
        rows = [{"model": self.model, "circuit": "found", "seed": None, "accuracy": self.circuit_accuracy,
                 "faithfulness": self.faithfulness}]
        rows += [{"model": self.model, "circuit": "random", "seed": i, "accuracy": a, "faithfulness": f}
                 for i, (a, f) in enumerate(zip(self.random_accuracy, self.random_faithfulness, strict=True))]
        df = pd.DataFrame(rows)
        df["model_accuracy"], df["chance"], df["size"] = self.model_accuracy, self.chance, self.circuit_size
        return df

    def plot(self):
        import plotly.express as px

        return px.strip(self.to_frame(), x="circuit", y="faithfulness", color="circuit",
                        title=f"faithfulness in {self.model} (size {self.circuit_size}; chance acc {self.chance:.2f})")


def faithfulness(subject, prompts: Any, answers: Tensor, circuit: Circuit, positions: dict, *,
                 mean_prompts: Any = None, seeds: Sequence[int] = (0, 1, 2, 3, 4), chance: float = float("nan")
                 ) -> Faithfulness:
    """Circuit accuracy / model accuracy with mean ablation, and random same-size circuits."""
    if not isinstance(circuit, Circuit):
        raise ValueError(f"circuit: expected a workbench.circuits.Circuit, got {type(circuit).__name__}")
    toks = subject.as_tokens(prompts)
    B, P = toks.input_ids.shape
    answers = torch.as_tensor(answers).long()
    if answers.shape[0] != B:
        raise ValueError(f"answers: expected {B} answer ids, got {answers.shape[0]}")
    means = mean_z(subject, toks if mean_prompts is None else mean_prompts)
    if next(iter(means.values())).shape[0] != P:
        raise ValueError("mean_prompts: must have the same token length as prompts")
    a = subject.arch
    model_acc = accuracy(subject, toks, answers)
    circ_acc = accuracy(subject, toks, answers, ablation_hooks(circuit, positions, means, B, P, a))
    rand = [accuracy(subject, toks, answers,
                     ablation_hooks(circuit.random_like(a.n_layers, a.n_heads, s), positions, means, B, P, a))
            for s in seeds]
    f = circ_acc / model_acc if model_acc > 0 else float("nan")
    rf = tuple(r / model_acc if model_acc > 0 else float("nan") for r in rand)
    return Faithfulness(subject.name, model_acc, circ_acc, f, circuit.size, tuple(rand), rf, chance)
