"""Graft (task-specific skill localization, Panigrahi et al. 2023): put the tuned values of the
few most changed parameters onto the base model, and see how much of the fine-tune they carry.

    edit = Graft.fit(pair, fraction=1e-3)          # top 0.1 % of entries by |tuned - base|
    with edit.applied(pair.base):                  # base now holds those tuned values
        ...
    curve = graft_curve(pair, metric, fractions=(1e-4, 1e-3, 1e-2), seeds=(0, 1, 2))
    curve.summary()                                # metric recovered: top-x % vs random x % (control)

The paper *learns* a sparse mask; we take the simplest strong baseline, the entries with the
largest absolute change, ranked globally across all (included) parameters. The control grafts
the same number of entries chosen uniformly at random. "Recovered" is
(metric(grafted) - metric(base)) / (metric(tuned) - metric(base)).

The edit stores (parameter name, flat index, tuned value) triples: exactly the delta, a few KB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from edits.base import WeightEdit, register
from workbench.results import Result


def _included(pair_or_subject, include: Callable[[str], bool] | None) -> list[str]:
    s = pair_or_subject.base if hasattr(pair_or_subject, "tuned") else pair_or_subject
    names = [n for n in s.params.names() if include is None or include(n)]
    if not names:
        raise ValueError("include: no parameter matched")
    return names


def _count(fraction: float, total: int) -> int:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a fraction in (0, 1], got {fraction!r}")
    return max(1, math.ceil(fraction * total))


@register
@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class Graft(WeightEdit):
    """Write `values[i]` into entry `index[i]` (flat) of parameter `names[param[i]]`."""

    method: ClassVar[str] = "graft"
    names: tuple[str, ...]
    param: Tensor  # (k,) long: which name
    index: Tensor  # (k,) long: flat index into that parameter
    values: Tensor  # (k,) the tuned values
    shapes: tuple = ()  # shape of each named parameter (flat indices mean nothing on another shape)
    fraction: float | None = None
    selection: str = "top"  # "top" (largest |delta|) or "random" (the control)
    model_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "shapes", tuple(tuple(int(d) for d in sh) for sh in self.shapes))
        if self.shapes and len(self.shapes) != len(self.names):
            raise ValueError(f"shapes: expected one shape per name ({len(self.names)}), got {len(self.shapes)}")
        for f in ("param", "index", "values"):
            v = getattr(self, f)
            if not isinstance(v, Tensor) or v.ndim != 1:
                raise ValueError(f"{f}: expected a 1-D tensor, got {type(v).__name__}"
                                 f"{'' if not isinstance(v, Tensor) else tuple(v.shape)}")
        if not (len(self.param) == len(self.index) == len(self.values)):
            raise ValueError(f"param, index, values: expected equal lengths, got {len(self.param)}, "
                             f"{len(self.index)}, {len(self.values)}")
        if len(self.param) and (int(self.param.min()) < 0 or int(self.param.max()) >= len(self.names)):
            raise ValueError(f"param: expected ids in [0, {len(self.names)}), got {self.param.min()}..{self.param.max()}")
        if self.selection not in ("top", "random"):
            raise ValueError(f"selection: expected 'top' or 'random', got {self.selection!r}")

    @property
    def n_entries(self) -> int:
        return len(self.values)

    # --- construction --------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def fit(cls, pair, fraction: float, *, include: Callable[[str], bool] | None = None) -> Graft:
        """The top `fraction` of all included entries by |tuned - base|, with their tuned values."""
        names = _included(pair, include)
        deltas = [(pair.tuned.params[n].detach() - pair.base.params[n].detach()).flatten().abs() for n in names]
        k = _count(fraction, sum(d.numel() for d in deltas))
        top = torch.topk(torch.cat(deltas).float(), k).indices
        return cls._at(pair, names, top, [d.numel() for d in deltas], fraction, "top")

    @classmethod
    @torch.no_grad()
    def random(cls, pair, fraction: float, *, seed: int = 0, include: Callable[[str], bool] | None = None) -> Graft:
        """The control: as many entries as `fit`, chosen uniformly at random."""
        names = _included(pair, include)
        sizes = [pair.base.params[n].numel() for n in names]
        total = sum(sizes)
        k = _count(fraction, total)
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(total, generator=g)[:k]
        return cls._at(pair, names, pick, sizes, fraction, "random")

    @classmethod
    def _at(cls, pair, names: list[str], flat: Tensor, sizes: list[int], fraction: float, selection: str) -> Graft:
        offsets = torch.tensor([0] + sizes).cumsum(0)
        pid = torch.searchsorted(offsets, flat, right=True) - 1
        local = flat - offsets[pid]
        order = torch.argsort(pid * (offsets[-1] + 1) + local)
        pid, local = pid[order], local[order]
        vals = torch.zeros(len(pid))
        used = sorted(set(pid.tolist()))
        for p in used:
            m = pid == p
            vals[m] = pair.tuned.params[names[p]].detach().flatten()[local[m]].float()
        remap = {old: new for new, old in enumerate(used)}
        kept = tuple(names[i] for i in used)
        return cls(names=kept, param=torch.tensor([remap[int(p)] for p in pid], dtype=torch.long),
                   index=local.long(), values=vals.float(), shapes=tuple(tuple(pair.base.params[n].shape) for n in kept),
                   fraction=float(fraction), selection=selection, model_id=pair.base.identity())

    @classmethod
    def example(cls, subject) -> Graft:
        """16 entries of one layer-0 projection moved by +0.5: a visible, valid graft for `subject`."""
        from workbench.diff_weights import module_of

        prefer = ("o", "v", "down", "up", "gate", "q", "qkv")
        cands = [(prefer.index(module_of(n)[1]), n) for n, p in subject.params.items()
                 if p.ndim == 2 and module_of(n)[0] == 0 and module_of(n)[1] in prefer]
        if not cands:
            raise ValueError(f"Graft.example: {subject.name!r} has no 2-D projection in layer 0")
        name = min(cands)[1]
        p = subject.params[name].detach().flatten()
        idx = torch.randperm(p.numel(), generator=torch.Generator().manual_seed(0))[:16].sort().values
        return cls(names=(name,), param=torch.zeros(16, dtype=torch.long), index=idx, values=(p[idx] + 0.5).float(),
                   shapes=(tuple(subject.params[name].shape),), fraction=16 / sum(q.numel() for _, q in subject.params.items()), model_id=subject.identity())

    # --- the edit ------------------------------------------------------------------------------
    def check_compatible(self, subject) -> None:
        super().check_compatible(subject)
        for j, name in enumerate(self.names):
            if name not in subject.params:
                raise ValueError(f"graft: {subject.name!r} has no parameter {name!r}; this edit was made for "
                                 "another model")
            shape = tuple(subject.params[name].shape)
            if self.shapes and shape != self.shapes[j]:
                raise ValueError(f"graft: {name} has shape {shape} in {subject.name!r}, but this edit was made for "
                                 f"shape {self.shapes[j]}; this edit was made for another model")
            sel = self.index[self.param == j]
            n = subject.params[name].numel()
            if len(sel) and int(sel.max()) >= n:
                raise ValueError(f"graft: index {int(sel.max())} out of range for {name} with {n} entries; this "
                                 "edit was made for another model")

    def changes(self, subject) -> list[tuple[str, Any, Tensor]]:
        out = []
        for j, name in enumerate(self.names):
            sel = self.param == j
            shape = subject.params[name].shape
            out.append((name, torch.unravel_index(self.index[sel], shape), self.values[sel]))
        return out


@dataclass(frozen=True)
class GraftCurve(Result):
    """Metric recovered by grafting the top-x % entries vs x % random entries (the control)."""

    base_metric: float
    tuned_metric: float
    frame: pd.DataFrame  # fraction, selection, seed, n_entries, metric, recovered

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> pd.DataFrame:
        return self.frame.groupby(["selection", "fraction"])["recovered"].agg(["mean", "std", "count"]).reset_index()

    def plot(self):
        import plotly.graph_objects as go

        s = self.summary()
        fig = go.Figure()
        for sel, sub in s.groupby("selection"):
            fig.add_trace(go.Scatter(x=100 * sub["fraction"], y=sub["mean"], error_y={"array": sub["std"].fillna(0)},
                                     mode="lines+markers", name="top |delta|" if sel == "top" else "random (control)"))
        fig.add_hline(y=1.0, line_dash="dash", annotation_text="tuned")
        fig.update_layout(title="Graft: metric recovered by the tuned values of x % of the entries",
                          xaxis_title="grafted entries (% of all)", xaxis_type="log", yaxis_title="recovered")
        return fig


def graft_curve(pair, metric: Callable, *, fractions: Sequence[float] = (1e-4, 1e-3, 1e-2),
                seeds: Sequence[int] = (0, 1, 2), include: Callable[[str], bool] | None = None) -> GraftCurve:
    """`metric(subject) -> float` on base, tuned, base + top-x % graft, and base + random-x % grafts."""
    if not callable(metric):
        raise ValueError("metric: expected a callable metric(subject) -> float")
    if not fractions or not seeds:
        raise ValueError("fractions, seeds: expected at least one of each")
    m_base, m_tuned = float(metric(pair.base)), float(metric(pair.tuned))
    gain = m_tuned - m_base
    rows = []

    def measure(edit: Graft, seed: int) -> None:
        with edit.applied(pair.base):
            m = float(metric(pair.base))
        rows.append({"fraction": float(edit.fraction or 0), "selection": edit.selection, "seed": seed,
                     "n_entries": edit.n_entries, "metric": m,
                     "recovered": (m - m_base) / gain if gain != 0 else math.nan})

    for f in fractions:
        measure(Graft.fit(pair, f, include=include), -1)
        for s in seeds:
            measure(Graft.random(pair, f, seed=int(s), include=include), int(s))
    return GraftCurve(base_metric=m_base, tuned_metric=m_tuned, frame=pd.DataFrame(rows))
