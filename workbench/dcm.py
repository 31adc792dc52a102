"""Desiderata-based component masking, DCM (Davies et al. 2023; Prakash et al. 2024).

For one group of heads read at one position, learn a mask m in [0, 1] per head:
    z_head <- m * z_head(base) + (1 - m) * z_head(counterfactual)       at the group position
loss = -logit[target] + lam * sum(1 - m), Adam lr 0.1, m clamped to [0, 1] after every step.
The target is what the model should say if the heads switched to the counterfactual carry the
desideratum's variable; the kept mask is the rounded one with the best validation accuracy.
Heads with rounded m = 0 are the ones that carry the variable.

Entity-tracking desiderata (the counterfactual always queries a different segment k != i):
- position: fresh objects and labels; target = the original's object at segment k;
- object:   fresh objects; target = the counterfactual's own answer (absent from the original);
- label:    the counterfactual queries a label that the original has at segment j (j != i, k);
            target = the original's object at segment j.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from workbench.path_patching import positions_tensor
from workbench.results import Result
from workbench.sites import Site
from workbench.subject import Tokens

Head = tuple[int, int]
DESIDERATA = ("position", "object", "label")


def entity_desideratum(examples: Sequence[Any], kind: str, *, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(base prompts, counterfactual prompts, target words) for `workbench.tasks` entity examples."""
    from workbench.tasks.entities import episode_context, query
    from workbench.tasks.vocab import BOX_LABELS, OBJECTS

    if kind not in DESIDERATA:
        raise ValueError(f"kind: expected one of {DESIDERATA}, got {kind!r}")
    rng = random.Random(seed)
    base, cf, target = [], [], []
    for e in examples:
        objs, labs, i = list(e.meta["objects"]), list(e.meta["labels"]), int(e.meta["query_index"])
        n = len(objs)
        if n < 3:
            raise ValueError("examples: DCM desiderata need episodes of at least 3 objects")
        k = rng.choice([x for x in range(n) if x != i])
        new_objs = rng.sample([o for o in OBJECTS if o not in objs], n)
        new_labs = rng.sample([b for b in BOX_LABELS if b not in labs], n)
        if kind == "position":
            c_objs, c_labs, t = new_objs, new_labs, objs[k]
        elif kind == "object":
            c_objs, c_labs, t = new_objs, labs, new_objs[k]
        else:
            j = rng.choice([x for x in range(n) if x not in (i, k)])
            c_labs = list(new_labs)
            c_labs[k] = labs[j]
            c_objs, t = new_objs, objs[j]
        base.append(e.prompt)
        fmt = e.meta.get("format", "object_first")
        cf.append(f"{episode_context(c_objs, c_labs, fmt)} . {query(c_labs[k], fmt)}")
        target.append(t)
    return base, cf, target


@dataclass(frozen=True)
class DCMResult(Result):
    desideratum: str
    heads: tuple
    mask: Tensor  # best rounded validation mask, 1 = keep base, 0 = switch to counterfactual
    val_accuracy: float  # target accuracy on validation with the rounded mask
    selected: tuple  # heads with mask 0
    random_accuracy: tuple  # same number of random heads of the group switched, per seed
    all_switched_accuracy: float  # every head of the group switched
    history: tuple  # (epoch, loss, val accuracy)

    @property
    def fraction(self) -> float:
        return len(self.selected) / max(1, len(self.heads))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"desideratum": self.desideratum, "layer": layer, "head": h, "mask": float(m),
                              "selected": (layer, h) in set(self.selected)}
                             for (layer, h), m in zip(self.heads, self.mask.tolist(), strict=True)])

    def plot(self):
        import plotly.express as px

        df = self.to_frame()
        df["head_id"] = [f"L{r.layer}H{r.head}" for r in df.itertuples()]
        return px.bar(df, x="head_id", y="mask", title=f"DCM mask ({self.desideratum}): val acc "
                      f"{self.val_accuracy:.2f}, random {sum(self.random_accuracy) / max(1, len(self.random_accuracy)):.2f}")


def _mixed_logits(subject, base_tok, cf_z, heads, pos, mask: Tensor):
    B = base_tok.input_ids.shape[0]
    ar = torch.arange(B)
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for i, (layer, h) in enumerate(heads):
        by_layer.setdefault(layer, []).append((i, h))

    def fn(x, layer):
        x = x.clone()
        for i, h in by_layer[layer]:
            m = mask[i]
            x[ar, pos, h] = m * x[ar, pos, h] + (1 - m) * cf_z[layer][ar, pos, h]
        return x

    logits, _ = subject.run(base_tok, hooks=[(Site(layer, "z"), lambda x, layer=layer: fn(x, layer))
                                             for layer in by_layer])
    return logits[:, -1]


def dcm(subject, base: Any, counterfactual: Any, targets: Any, heads: Sequence[Head], position: Any, *,
        desideratum: str = "custom", epochs: int = 30, lr: float = 0.1, lam: float = 0.01, val_frac: float = 0.3,
        seeds: Sequence[int] = (0, 1, 2)) -> DCMResult:
    """Learn the DCM mask over `heads` (read at `position`, an int or per-row positions)."""
    from workbench.patching import answer_ids, token_pair

    heads = [(int(a), int(b)) for a, b in heads]
    if not heads:
        raise ValueError("heads: expected at least one (layer, head)")
    if not 0 < val_frac < 1:
        raise ValueError(f"val_frac: expected a fraction in (0, 1), got {val_frac}")
    b_tok, c_tok = token_pair(subject, base, counterfactual)
    B, P = b_tok.input_ids.shape
    tgt = answer_ids(subject, targets)
    if tgt.shape[0] != B:
        raise ValueError(f"targets: expected {B} targets, got {tgt.shape[0]}")
    pos = positions_tensor(position, B, P, "position")
    layers = sorted({layer for layer, _ in heads})
    with torch.no_grad():
        _, cache = subject.run(c_tok, cache=[Site(layer, "z") for layer in layers])
    cf_z = {s.layer: v for s, v in cache.items()}
    n_val = max(1, int(round(B * val_frac)))
    tr, va = torch.arange(n_val, B), torch.arange(n_val)
    if len(tr) == 0:
        raise ValueError("base: too few prompts to hold out a validation split")

    def sub(idx):
        return (Tokens(b_tok.input_ids[idx], b_tok.attention_mask[idx]),
                {layer: z[idx] for layer, z in cf_z.items()}, pos[idx], tgt[idx])

    def val_acc(m: Tensor) -> float:
        t, z, p, y = sub(va)
        with torch.no_grad():
            return float((_mixed_logits(subject, t, z, heads, p, m).argmax(-1) == y).float().mean())

    m = torch.ones(len(heads), requires_grad=True)
    opt = torch.optim.Adam([m], lr=lr)
    t, z, p, y = sub(tr)
    best, best_mask, hist = -1.0, torch.ones(len(heads)), []
    for ep in range(epochs):
        with torch.enable_grad():
            last = _mixed_logits(subject, t, z, heads, p, m)
            loss = -last[torch.arange(len(y)), y].mean() + lam * (1 - m).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            m.clamp_(0, 1)
        rounded = m.detach().round()
        acc = val_acc(rounded)
        hist.append((ep, float(loss.detach()), acc))
        if acc > best:
            best, best_mask = acc, rounded.clone()
    selected = tuple(hd for hd, v in zip(heads, best_mask.tolist(), strict=True) if v == 0)
    rand = []
    for s in seeds:
        r = random.Random(s)
        pick = set(r.sample(range(len(heads)), len(selected)))
        rand.append(val_acc(torch.tensor([0.0 if i in pick else 1.0 for i in range(len(heads))])))
    return DCMResult(desideratum, tuple(heads), best_mask, best, selected, tuple(rand),
                     val_acc(torch.zeros(len(heads))), tuple(hist))
