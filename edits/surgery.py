"""Model Surgery (Wang et al. 2024): move a behaviour by nudging the gate rows that oppose it.

    probe = BehaviorProbe().fit(feats, labels)
    edit = ModelSurgery.fit(subject, probe, n_rows=64, alpha=1.0)   # undesired class = 1
    with edit.applied(subject):
        ...                                                          # behaviour reduced

Every row of every MLP gate projection (`gate_proj`; the first MLP matrix of a GELU MLP) is
scored by cosine with the probe's raw undesired-class row `w`; the K most *negative* rows,
taken globally across layers, get `row += alpha * w`. Those rows fire less on inputs that look
like the undesired class. We read HF's unfolded weights (`subject.params`), never a
LayerNorm-folded copy, or the cosine would be taken against the wrong matrix.

The edit stores the chosen `(layer, row)` indices, `w`, `alpha` and the model identity: that is
the whole delta, a few KB on disk. `as_activation_edit()` gives the same change as a hook on
the gate pre-activation (`g_i += alpha * (w . x)` for the chosen rows i), for engines whose
weights cannot be written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from edits.base import ActivationEdit, WeightEdit, register
from workbench.results import Result

MATRICES = ("gate",)


def direction_of(probe_or_direction: Any, undesired: Any) -> Tensor:
    """The raw direction of a fitted probe's `undesired` class, or a given 1-D direction as float32."""
    if hasattr(probe_or_direction, "direction"):
        return probe_or_direction.direction(undesired)
    d = torch.as_tensor(np.asarray(probe_or_direction), dtype=torch.float32)
    if d.ndim != 1:
        raise ValueError(f"probe: expected a fitted BehaviorProbe or a 1-D direction, got shape {tuple(d.shape)}")
    return d


def gate_layers(subject) -> list[int]:
    """Layers with a single dense gate projection (MoE layers have none)."""
    return list(subject.arch.dense_layers)


@torch.no_grad()
def gate_scores(subject, direction: Tensor) -> dict[int, Tensor]:
    """cosine(row, w) for every gate row, per layer: one pass over the gate weights."""
    w = direction.to(torch.float32).flatten()
    if w.shape[0] != subject.arch.d_model:
        raise ValueError(f"direction: expected size d_model={subject.arch.d_model}, got {w.shape[0]}")
    w = w / w.norm().clamp(min=1e-12)
    out = {}
    for layer in gate_layers(subject):
        W = subject.params.gate(layer).to(torch.float32)  # [d_mlp, d_model] view, unfolded
        out[layer] = (W @ w) / W.norm(dim=1).clamp(min=1e-12)
    return out


def _rows_tensor(rows: Any) -> Tensor:
    r = torch.as_tensor(rows, dtype=torch.long)
    if r.ndim != 2 or r.shape[1] != 2:
        raise ValueError(f"rows: expected a (k, 2) tensor of (layer, row) pairs, got shape {tuple(r.shape)}")
    return r


def _by_layer(rows: Tensor) -> dict[int, Tensor]:
    return {int(ly): rows[rows[:, 0] == ly, 1].sort().values for ly in rows[:, 0].unique()}


@register
@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class ModelSurgery(WeightEdit):
    """`row += alpha * direction` on `n_rows` (or a `fraction` of all) gate rows.

    `rows` (`k x 2`, (layer, row)) pins the selection; `fit` fills it in. Without `rows` the
    selection is recomputed from the subject's current gate weights at apply time.
    """

    method: ClassVar[str] = "model_surgery"
    direction: Tensor
    alpha: float = 1.0
    n_rows: int | None = None
    fraction: float | None = None
    matrices: str = "gate"
    rows: Tensor | None = None
    model_id: str | None = None

    def __post_init__(self) -> None:
        d = torch.as_tensor(self.direction, dtype=torch.float32).detach().flatten().clone()
        if not torch.isfinite(d).all() or d.norm() == 0:
            raise ValueError("direction: expected a finite, non-zero vector")
        object.__setattr__(self, "direction", d)
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.matrices not in MATRICES:
            raise ValueError(f"matrices: expected one of {MATRICES}, got {self.matrices!r}")
        if self.rows is not None:
            object.__setattr__(self, "rows", _rows_tensor(self.rows))
            if self.n_rows is not None and self.n_rows != len(self.rows):
                raise ValueError(f"n_rows: {self.n_rows} disagrees with the {len(self.rows)} rows given")
            object.__setattr__(self, "n_rows", len(self.rows))
        elif (self.n_rows is None) == (self.fraction is None):
            raise ValueError("ModelSurgery: give exactly one of n_rows (an int >= 1) or fraction (0 < f <= 1)")
        if self.n_rows is not None and (not isinstance(self.n_rows, int) or self.n_rows < 1):
            raise ValueError(f"n_rows: expected an int >= 1, got {self.n_rows!r}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction: expected 0 < fraction <= 1, got {self.fraction!r}")

    # --- construction ----------------------------------------------------------------
    @classmethod
    def fit(cls, subject, probe: Any, *, n_rows: int | None = None, fraction: float | None = None,
            alpha: float = 1.0, undesired: Any = 1) -> ModelSurgery:
        """Select the rows on `subject` for `probe`'s undesired class; the result is pinned to it."""
        spec = cls(direction=direction_of(probe, undesired), alpha=alpha, n_rows=n_rows, fraction=fraction)
        return dataclasses.replace(spec, rows=spec.select(subject), n_rows=None, fraction=None,
                                   model_id=subject.identity())

    @classmethod
    def random(cls, subject, probe: Any, *, n_rows: int, alpha: float = 1.0, seed: int = 0,
               undesired: Any = 1) -> ModelSurgery:
        """Control: the same edit on `n_rows` gate rows drawn uniformly at random."""
        layers = gate_layers(subject)
        d_mlp = subject.params.gate(layers[0]).shape[0]
        total = len(layers) * d_mlp
        if not 1 <= n_rows <= total:
            raise ValueError(f"n_rows: expected 1..{total}, got {n_rows}")
        g = torch.Generator().manual_seed(seed)
        flat = torch.randperm(total, generator=g)[:n_rows]
        rows = torch.stack([torch.tensor(layers)[flat // d_mlp], flat % d_mlp], 1)
        return cls(direction=direction_of(probe, undesired), alpha=alpha, rows=rows, model_id=subject.identity())

    @classmethod
    def example(cls, subject) -> ModelSurgery:
        """Conformance-table factory: a random unit-scale direction on 4 rows."""
        g = torch.Generator().manual_seed(0)
        w = torch.randn(subject.arch.d_model, generator=g)
        w = w / w.norm() * float(subject.params.gate(gate_layers(subject)[0]).norm(dim=1).mean())
        return cls.fit(subject, w, n_rows=4, alpha=2.0)

    def with_alpha(self, alpha: float) -> ModelSurgery:
        return dataclasses.replace(self, alpha=alpha)

    def as_activation_edit(self) -> GateAdd:
        if self.rows is None:
            raise ValueError("as_activation_edit: pin the rows first (ModelSurgery.fit, or pass rows=)")
        return GateAdd(direction=self.direction, alpha=self.alpha, rows=self.rows, model_id=self.model_id)

    # --- selection and the edit ------------------------------------------------------
    def select(self, subject) -> Tensor:
        """The `k x 2` (layer, row) pairs with the most negative cosine, globally."""
        if self.rows is not None:
            return self.rows
        scores = gate_scores(subject, self.direction)
        layers = list(scores)
        flat = torch.cat([scores[ly] for ly in layers])
        k = self.n_rows if self.n_rows is not None else max(1, round(self.fraction * flat.numel()))
        if k > flat.numel():
            raise ValueError(f"n_rows: {k} exceeds the {flat.numel()} gate rows of {subject.name!r}")
        idx = torch.topk(flat, k, largest=False).indices
        sizes = torch.tensor([len(scores[ly]) for ly in layers])
        starts = torch.cumsum(sizes, 0) - sizes
        li = torch.searchsorted(starts, idx, right=True) - 1
        return torch.stack([torch.tensor(layers)[li], idx - starts[li]], 1)

    def check_compatible(self, subject) -> None:
        super().check_compatible(subject)
        if self.direction.shape[0] != subject.arch.d_model:
            raise ValueError(f"{self.method}: direction has size {self.direction.shape[0]}, but {subject.name!r} "
                             f"has d_model={subject.arch.d_model}; this edit was made for another model")
        if self.rows is not None:
            layers = set(gate_layers(subject))
            for ly, rows in _by_layer(self.rows).items():
                if ly not in layers or int(rows.max()) >= subject.arch.d_mlp:
                    raise ValueError(f"{self.method}: row ({ly}, {int(rows.max())}) does not exist in "
                                     f"{subject.name!r} (gate layers {sorted(layers)}, d_mlp={subject.arch.d_mlp})")

    def changes(self, subject) -> list[tuple[str, Any, Tensor]]:
        out = []
        for layer, rows in _by_layer(self.select(subject)).items():
            name, transposed = subject.params.gate_name(layer)
            p = subject.params[name].data
            w = self.direction.to(p.device, torch.float32)
            if transposed:  # Conv1D stores [d_model, d_mlp]: a gate "row" is a column
                index = (slice(None), rows)
                new = (p[index].float() + self.alpha * w[:, None]).to(p.dtype)
            else:
                index = rows
                new = (p[index].float() + self.alpha * w[None]).to(p.dtype)
            out.append((name, index, new))
        return out

    def report(self, subject) -> SurgeryReport:
        """Rows chosen per layer and the edit's size relative to the gate weights."""
        rows = self.select(subject)
        per = {ly: 0 for ly in gate_layers(subject)} | {ly: len(r) for ly, r in _by_layer(rows).items()}
        gate_sq = sum(float(subject.params.gate(ly).float().pow(2).sum()) for ly in per)
        chosen_sq = sum(float(subject.params.gate(ly)[r].float().pow(2).sum()) for ly, r in _by_layer(rows).items())
        delta = abs(self.alpha) * float(self.direction.norm()) * len(rows) ** 0.5
        n_gate = sum(subject.params.gate(ly).shape[0] for ly in per)
        return SurgeryReport(rows_per_layer=tuple(per.items()), n_rows=len(rows), fraction_of_gate_rows=len(rows) / n_gate,
                             rel_norm=delta / gate_sq ** 0.5, rel_norm_chosen=delta / max(chosen_sq, 1e-24) ** 0.5,
                             alpha=self.alpha)


@register
@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class GateAdd(ActivationEdit):
    """Activation-level Model Surgery: `g[..., i] += alpha * (w . x)` on the chosen gate rows i,
    where `x` is the MLP's (normalised) input and `g` the gate pre-activation.

    Mathematically the same as the weight edit: (W + alpha 1 w^T) x = W x + alpha (w . x) 1.
    The Site vocabulary has no gate pre-activation yet, so this attaches a torch forward hook to
    the gate projection module itself (found through its Parameter, on either local engine) and
    removes it on revert; once a `mlp_pre` site exists it becomes a plain intervention.
    """

    method: ClassVar[str] = "model_surgery_act"
    direction: Tensor
    alpha: float
    rows: Tensor
    model_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", torch.as_tensor(self.direction, dtype=torch.float32).detach().flatten())
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "rows", _rows_tensor(self.rows))

    @classmethod
    def example(cls, subject) -> GateAdd:
        return ModelSurgery.example(subject).as_activation_edit()

    def check_compatible(self, subject) -> None:
        ModelSurgery(direction=self.direction, alpha=self.alpha, rows=self.rows, model_id=self.model_id) \
            .check_compatible(subject)

    def interventions(self, subject) -> list:
        return []  # see class docstring: lives on the gate module until `mlp_pre` is a Site

    def _apply(self, subject):
        handles = []
        try:
            for layer, rows in _by_layer(self.rows).items():
                name, _ = subject.params.gate_name(layer)
                module = _owner(subject.hf_model, subject.params[name])
                handles.append(module.register_forward_hook(_gate_hook(self.direction, self.alpha, rows)))
        except Exception:
            for h in handles:
                h.remove()
            raise

        def undo():
            for h in reversed(handles):
                h.remove()

        return undo


def _owner(model: torch.nn.Module, param: torch.nn.Parameter) -> torch.nn.Module:
    for m in model.modules():
        if any(p is param for p in m.parameters(recurse=False)):
            return m
    raise ValueError("GateAdd: could not find the module that owns the gate weight")


def _gate_hook(w: Tensor, alpha: float, rows: Tensor) -> Callable:
    def hook(module, args, out):
        x = args[0]
        add = alpha * (x.float() @ w.to(x.device))  # batch pos
        out = out.clone()
        out[..., rows.to(out.device)] += add[..., None].to(out.dtype)
        return out

    return hook


@dataclass(frozen=True)
class SurgeryReport(Result):
    rows_per_layer: tuple[tuple[int, int], ...]
    n_rows: int
    fraction_of_gate_rows: float
    rel_norm: float  # ||delta||_F / ||all gate weights||_F
    rel_norm_chosen: float  # ||delta||_F / ||chosen rows||_F
    alpha: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"layer": ly, "rows": n} for ly, n in self.rows_per_layer])

    def plot(self):
        import plotly.express as px

        return px.bar(self.to_frame(), x="layer", y="rows",
                      title=f"Model Surgery: {self.n_rows} gate rows chosen per layer "
                            f"(relative norm {self.rel_norm:.2%})")


# --- the experiment: edit vs controls, behaviour and capability --------------------------

@dataclass(frozen=True)
class SurgeryEval(Result):
    """One row per condition: `base`, `surgery`, `random` (one per seed), `negative alpha`."""

    rows: tuple[dict, ...]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))

    def summary(self) -> pd.DataFrame:
        f = self.to_frame().drop(columns=["seed"])
        return f.groupby("condition", sort=False).agg(["mean", "std"])

    def rate(self, condition: str) -> float:
        return float(self.to_frame().query("condition == @condition")["behaviour_rate"].mean())

    def relative_reduction(self, condition: str = "surgery") -> float:
        base = self.rate("base")
        return float("nan") if base == 0 else 1 - self.rate(condition) / base

    def plot(self):
        import plotly.express as px

        f = self.to_frame()
        return px.strip(f, x="condition", y="behaviour_rate", title="Behaviour rate: surgery vs controls")


def evaluate_surgery(subject, edit: ModelSurgery, prompts: Sequence[str], judge: Callable[[str], Any], *,
                     tasks: Mapping[str, Callable] | None = None, seeds: Sequence[int] = (0, 1, 2),
                     negative: bool = True, max_new_tokens: int = 20) -> SurgeryEval:
    """Behaviour rate (and task scores) without the edit, with it, with the same edit on random
    rows (one per seed) and with `-alpha`; every condition is reverted before the next."""
    from workbench.behaviour import evaluate_behaviour, evaluate_capability

    rows = edit.select(subject)
    conditions: list[tuple[str, int | None, Any]] = [("base", None, None), ("surgery", None, edit)]
    conditions += [("random", s, ModelSurgery.random(subject, edit.direction, n_rows=len(rows), alpha=edit.alpha,
                                                     seed=s)) for s in seeds]
    if negative:
        conditions.append(("negative alpha", None, edit.with_alpha(-edit.alpha)))
    out = []
    for name, seed, e in conditions:
        h = e.apply(subject) if e is not None else None
        try:
            r = {"condition": name, "seed": seed,
                 "behaviour_rate": evaluate_behaviour(subject, prompts, judge, max_new_tokens=max_new_tokens).rate}
            if tasks:
                r |= evaluate_capability(subject, tasks).scores_dict()
        finally:
            if h is not None:
                h.revert()
        out.append(r)
    return SurgeryEval(tuple(out))


# --- choosing K and alpha on a validation split ------------------------------------------

def alpha_for(subject, direction: Tensor, scale: float) -> float:
    """The alpha that moves a row by `scale` times the mean gate-row norm (`alpha * ||w||`).

    The raw probe row's norm depends on the feature scale it was trained on, so a grid over
    this relative scale transfers across probes and layers; the edit still stores raw alpha.
    """
    rows = torch.cat([subject.params.gate(ly).float() for ly in gate_layers(subject)])
    return float(scale) * float(rows.norm(dim=1).mean()) / float(direction.float().norm())


@dataclass(frozen=True)
class SurgeryGrid(Result):
    """Validation scores of every (n_rows, scale) pair, with the unedited baseline."""

    rows: tuple[dict, ...]
    baseline: dict

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))

    def best(self, max_drop: float = 0.02) -> dict:
        """Lowest behaviour rate among settings whose every task drops by <= `max_drop`."""
        f = self.to_frame()
        tasks = [k for k in self.baseline if k != "behaviour_rate"]
        ok = np.ones(len(f), dtype=bool)
        for t in tasks:
            ok &= (self.baseline[t] - f[t]).to_numpy() <= max_drop + 1e-12
        if not ok.any():
            raise ValueError(f"SurgeryGrid.best: no setting keeps every task within {max_drop} of the baseline")
        return f[ok].sort_values(["behaviour_rate", "n_rows", "scale"]).iloc[0].to_dict()

    def plot(self):
        import plotly.express as px

        f = self.to_frame()
        return px.line(f, x="scale", y="behaviour_rate", color="n_rows", markers=True, log_x=True,
                       facet_col="direction" if "direction" in f else None,
                       title="Validation behaviour rate by rows edited (K) and relative alpha")


def surgery_grid(subject, direction: Tensor | Mapping[str, Tensor], prompts: Sequence[str],
                 judge: Callable[[str], Any], *, tasks: Mapping[str, Callable], n_rows: Sequence[int] = (16, 64, 256),
                 scales: Sequence[float] = (1, 2, 4, 8), max_new_tokens: int = 20) -> SurgeryGrid:
    """Evaluate Model Surgery for every (K, relative alpha) on *validation* prompts and tasks.

    `direction` may be a mapping `label -> direction` (e.g. the probe of each layer): the probe
    layer is then one more hyperparameter, chosen on validation like K and alpha, and each row
    carries its label in a `direction` column.
    """
    from workbench.behaviour import evaluate_behaviour, evaluate_capability

    if isinstance(direction, Mapping):
        if not direction:
            raise ValueError("direction: expected a tensor or a non-empty mapping label -> direction")
        named = dict(direction)
    else:
        named = {None: direction}

    def measure() -> dict:
        r = {"behaviour_rate": evaluate_behaviour(subject, prompts, judge, max_new_tokens=max_new_tokens).rate}
        return r | evaluate_capability(subject, tasks).scores_dict()

    baseline = measure()
    out = []
    for label, d in named.items():
        key = {} if label is None else {"direction": label}
        for k in n_rows:
            for sc in scales:
                alpha = alpha_for(subject, d, sc)
                with ModelSurgery.fit(subject, d, n_rows=int(k), alpha=alpha).applied(subject):
                    out.append(key | {"n_rows": int(k), "scale": float(sc), "alpha": alpha} | measure())
    return SurgeryGrid(tuple(out), baseline)
