"""Activation patching and attribution patching sweeps (layer x position x head), batched.

Convention (TransformerLens's): run the *corrupted* prompts, patch in the *clean* activation at
one cell (layer, position[, head]) and record `metric(logits)`; a cell that matters moves the
metric from its corrupted value toward its clean value.

Speed without approximation. TransformerLens runs one forward per cell. Here
- many cells share one forward: the corrupted batch is tiled K times along the batch axis and
  row block k patches cell k (a per-layer hook writes each block's cell);
- a cell whose clean and corrupted activations are bit-identical (every position before the
  first token where the prompts differ, by causality) cannot change anything: its value is the
  unpatched corrupted metric, so it is not run at all;
- for `resid_pre` (TL engine, no active interventions) a row patched at layer L starts at
  block L from the cached corrupted residual with the clean cell written in: below L it is
  the corrupted run, so those layers are not recomputed (`engines.tl_patching.run_entering`).
Both keep the numbers equal to TransformerLens's to float tolerance (tests/circuits check it).

Attribution patching (Nanda 2023; Syed et al. 2023) estimates every cell at once from one
forward and one backward on the corrupted prompts: metric + grad . (clean - corrupt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.engines.tl_patching import can_enter_mid_stack, run_entering
from workbench.results import Result
from workbench.sites import Site

Metric = Callable[[Tensor], Tensor]  # logits `batch pos vocab` -> scalar
SWEEP_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z")


# --- metrics ---------------------------------------------------------------------------------
def answer_ids(subject, answers: Any) -> Tensor:
    """`batch` token ids of the answers: words (one token each), ints or a tensor."""
    if isinstance(answers, Tensor):
        return answers.long().reshape(-1)
    out = []
    for a in answers:
        if isinstance(a, str):
            ids = subject.tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"answers: {a!r} is {len(ids)} tokens; expected a single-token answer")
            out.append(ids[0])
        else:
            out.append(int(a))
    return torch.tensor(out, dtype=torch.long)


class _Named:
    name = "metric"

    def __repr__(self) -> str:
        return self.name


class LogitDiff(_Named):
    """Mean over the batch of logit[correct] - logit[wrong] at the last position."""

    def __init__(self, correct: Tensor, wrong: Tensor):
        self.correct, self.wrong, self.name = correct.long(), wrong.long(), "logit_diff"

    def __call__(self, logits: Tensor) -> Tensor:
        r = torch.arange(logits.shape[0], device=logits.device)
        last = logits[:, -1]
        return (last[r, self.correct] - last[r, self.wrong]).mean()


class ProbCorrect(_Named):
    """Mean probability of the correct token at the last position."""

    def __init__(self, correct: Tensor):
        self.correct, self.name = correct.long(), "prob_correct"

    def __call__(self, logits: Tensor) -> Tensor:
        p = logits[:, -1].float().softmax(-1)
        return p[torch.arange(p.shape[0], device=p.device), self.correct].mean()


class Accuracy(_Named):
    """Share of rows whose last-position argmax is the correct token."""

    def __init__(self, correct: Tensor):
        self.correct, self.name = correct.long(), "accuracy"

    def __call__(self, logits: Tensor) -> Tensor:
        return (logits[:, -1].argmax(-1) == self.correct.to(logits.device)).float().mean()


def metric_value(metric: Metric, logits: Tensor) -> Tensor:
    """Evaluate and insist on a scalar (a per-row metric silently averaged would hide a bug)."""
    v = metric(logits)
    if not isinstance(v, Tensor):
        try:
            v = torch.as_tensor(v, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"metric: expected a scalar, got {type(v).__name__}") from e
    if v.numel() != 1 or v.ndim != 0:
        raise ValueError(f"metric: expected a scalar (0-dim tensor or float) from metric(logits), got shape "
                         f"{tuple(v.shape)}; reduce over the batch (e.g. .mean()) inside the metric")
    return v


def metric_name(metric: Metric) -> str:
    return getattr(metric, "name", None) or getattr(metric, "__name__", "metric")


# --- inputs ----------------------------------------------------------------------------------
def token_pair(subject, clean: Any, corrupt: Any):
    """Tokens for clean and corrupt prompts that align position by position, or a clear error."""
    c, k = subject.as_tokens(clean), subject.as_tokens(corrupt)
    if len(c) != len(k):
        raise ValueError(f"clean/corrupt: {len(c)} clean prompts but {len(k)} corrupt prompts; expected pairs")
    lc, lk = c.lengths.tolist(), k.lengths.tolist()
    bad = [i for i, (a, b) in enumerate(zip(lc, lk, strict=True)) if a != b]
    if bad or c.input_ids.shape != k.input_ids.shape:
        i = bad[0] if bad else 0
        raise ValueError(f"clean/corrupt: pair {i} has {lc[i]} clean tokens but {lk[i]} corrupt tokens; patching "
                         "aligns positions, so each clean prompt and its corruption must have the same token length")
    return c, k


def check_component(subject, component: str, layers: Sequence[int] | None) -> list[int]:
    if component not in SWEEP_COMPONENTS:
        raise ValueError(f"component: expected one of {SWEEP_COMPONENTS}, got {component!r}")
    layers = list(range(subject.arch.n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers:
        subject.check_site(Site(layer, component))
    return layers


# --- result ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchingSweep(Result):
    """`values[layer, pos(, head)]` (or `[layer, head]` for whole-head sweeps) of the patched metric.

    `clean_value`/`corrupt_value` are the unpatched metrics; `normalized` in the frame is
    (value - corrupt) / (clean - corrupt): 1 = the cell alone restores the clean behaviour.
    """

    component: str
    method: str  # "exact" | "attribution"
    values: Tensor
    axes: tuple[str, ...]
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    heads: tuple[int, ...]
    clean_value: float
    corrupt_value: float
    metric: str
    labels: tuple[str, ...] = ()
    n_cells_run: int = 0

    @property
    def effect(self) -> Tensor:
        return self.values - self.corrupt_value

    def to_frame(self) -> pd.DataFrame:
        coords = {"layer": self.layers, "pos": self.positions, "head": self.heads}
        grids = np.meshgrid(*[np.asarray(coords[a]) for a in self.axes], indexing="ij")
        df = pd.DataFrame({a: g.reshape(-1) for a, g in zip(self.axes, grids, strict=True)})
        v = self.values.detach().float().reshape(-1).numpy()
        df["value"] = v
        denom = self.clean_value - self.corrupt_value
        df["normalized"] = (v - self.corrupt_value) / denom if denom != 0 else np.nan
        if "pos" in self.axes and self.labels:
            df["token"] = [self.labels[p] if p < len(self.labels) else "" for p in df["pos"]]
        df["component"], df["method"], df["metric"] = self.component, self.method, self.metric
        return df

    def plot(self, view: str | None = None):
        """Heatmap of the effect: `layer_pos` or `layer_head` (a 3-axis sweep sums the other axis)."""
        import plotly.express as px

        view = view or ("layer_head" if "head" in self.axes and "pos" not in self.axes else "layer_pos")
        if view not in ("layer_pos", "layer_head"):
            raise ValueError(f"view: expected 'layer_pos' or 'layer_head', got {view!r}")
        other = "head" if view == "layer_pos" else "pos"
        if other not in self.axes and view.split("_")[1] not in self.axes:
            raise ValueError(f"view: this sweep has axes {self.axes}, no {view.split('_')[1]!r} axis")
        eff = self.effect
        if other in self.axes and len(self.axes) == 3:
            eff = eff.sum(self.axes.index(other))
        col = view.split("_")[1]
        x = [f"{p}:{self.labels[p]}" if self.labels and p < len(self.labels) else str(p)
             for p in self.positions] if col == "pos" else [str(h) for h in self.heads]
        lim = float(eff.abs().max()) or 1.0
        return px.imshow(eff.detach().float().numpy(), x=x, y=[str(layer) for layer in self.layers],
                         labels={"x": col, "y": "layer", "color": f"d {self.metric}"}, aspect="auto",
                         color_continuous_scale="RdBu", zmin=-lim, zmax=lim,
                         title=f"{self.method} patching of {self.component} ({self.metric})")


# --- exact, batched -------------------------------------------------------------------------
def _cells(layers, positions, heads):
    if heads is None:
        return [(layer, p, None) for layer in layers for p in positions]
    if positions is None:
        return [(layer, None, h) for layer in layers for h in heads]
    return [(layer, p, h) for layer in layers for p in positions for h in heads]


def _select(x: Tensor, pos, head) -> Tensor:
    """The cell's slice of a whole-layer activation (batch first)."""
    x = x if pos is None else x[:, pos]
    return x if head is None else x[..., head, :]


def _layout(subject, component, layers, positions, by_head, per_position, P):
    heads = list(range(subject.arch.n_heads)) if component == "z" and by_head else None
    if component != "z" and not per_position:
        raise ValueError("per_position=False patches a head at every position; only for component='z'")
    pos = None if (heads is not None and not per_position) else (list(range(P)) if positions is None
                                                                   else [int(p) % P for p in positions])
    axes = ("layer",) + (("pos",) if pos is not None else ()) + (("head",) if heads is not None else ())
    return pos, heads, axes


def _labels(subject, toks) -> tuple[str, ...]:
    return tuple(subject.tokenizer.convert_ids_to_tokens(toks.input_ids[0].tolist()))


@torch.no_grad()
def activation_patching(subject, clean: Any, corrupt: Any, metric: Metric, *, component: str = "resid_pre",
                        layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                        by_head: bool = True, per_position: bool = True, max_rows: int = 256,
                        progress: bool | None = None) -> PatchingSweep:
    """Exact patching of every (layer, position[, head]) cell, many cells per forward.

    `component="z"` sweeps heads (`by_head`); `per_position=False` patches a head at all
    positions at once (TL's `attn_head_out_all_pos`). `max_rows` caps the rows of one forward.
    """
    c, k = token_pair(subject, clean, corrupt)
    layers = check_component(subject, component, layers)
    if max_rows < 1:
        raise ValueError(f"max_rows: expected >= 1, got {max_rows}")
    B, P = k.input_ids.shape
    pos, heads, axes = _layout(subject, component, layers, positions, by_head, per_position, P)
    sites = [Site(layer, component) for layer in layers]
    clean_logits, cc = subject.run(c, cache=sites)
    corrupt_logits, kc = subject.run(k, cache=sites)
    clean_v = float(metric_value(metric, clean_logits))
    corrupt_v = metric_value(metric, corrupt_logits)

    cells = _cells(layers, pos, heads)
    out = torch.full((len(cells),), float(corrupt_v))
    todo = [i for i, (layer, p, h) in enumerate(cells)
            if not torch.equal(_select(cc[Site(layer, component)], p, h), _select(kc[Site(layer, component)], p, h))]
    per = max(1, max_rows // B)
    # resid_pre rows can start at their own layer (the layers below are the corrupted run):
    # cells are layer-major, so each chunk's batch only grows as it goes up the stack.
    staged = component == "resid_pre" and heads is None and can_enter_mid_stack(subject)
    chunks = [todo[i:i + per] for i in range(0, len(todo), per)]
    show = progress if progress is not None else len(chunks) > 8
    for chunk in tqdm(chunks, desc=f"patch {component}", disable=not show, leave=False):
        K = len(chunk)
        by_layer: dict[int, list[tuple[int, Any, Any]]] = {}
        for j, i in enumerate(chunk):
            layer, p, h = cells[i]
            by_layer.setdefault(layer, []).append((j, p, h))
        if staged:
            # Each row starts at its patched layer from the cached corrupted residual with the
            # clean cell written in: below that layer it *is* the corrupted run (exact).
            entries = []
            for layer, cells_at in sorted(by_layer.items()):
                site = Site(layer, component)
                rows = kc[site].repeat(len(cells_at), 1, 1)
                for r, (_, p, _) in enumerate(cells_at):
                    rows[r * B:(r + 1) * B, p] = cc[site][:, p]
                entries.append((layer, rows))
            order = [j for _, cells_at in sorted(by_layer.items()) for j, _, _ in cells_at]
            logits = run_entering(subject, k.input_ids.repeat(K, 1), k.attention_mask.repeat(K, 1), entries)
            for r, j in enumerate(order):
                out[chunk[j]] = metric_value(metric, logits[r * B:(r + 1) * B]).float()
            continue
        hooks = []
        for layer, entries in by_layer.items():
            src = cc[Site(layer, component)]

            def fn(x, entries=entries, src=src):
                # In place, as TransformerLens's setters do under no_grad: where a hook point is a
                # module *input* (the bridge's resid_mid is ln2.hook_in) a copy would reach only
                # that module, while writing in place changes the residual stream itself.
                for j, p, h in entries:
                    rows = slice(j * B, (j + 1) * B)
                    ps = slice(None) if p is None else p
                    if h is None:
                        x[rows, ps] = src[:, ps]
                    else:
                        x[rows, ps, h] = src[:, ps, h]
                return x

            hooks.append((Site(layer, component), fn))
        ids = k.input_ids.repeat(K, 1)
        mask = k.attention_mask.repeat(K, 1)
        logits, _ = subject.run(subject.as_tokens(ids, mask), hooks=hooks)
        for j, i in enumerate(chunk):
            out[i] = metric_value(metric, logits[j * B:(j + 1) * B]).float()
    shape = [len(layers)] + ([len(pos)] if pos is not None else []) + ([len(heads)] if heads is not None else [])
    return PatchingSweep(component, "exact", out.reshape(shape), axes, tuple(layers), tuple(pos or ()),
                         tuple(heads or ()), clean_v, float(corrupt_v), metric_name(metric), _labels(subject, c),
                         len(todo))


# --- attribution ----------------------------------------------------------------------------
def attribution_patching(subject, clean: Any, corrupt: Any, metric: Metric, *, component: str = "resid_pre",
                         layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                         by_head: bool = True, per_position: bool = True) -> PatchingSweep:
    """Linear estimate of every cell of `activation_patching` from one forward + one backward.

    value(cell) = metric(corrupt) + sum over the cell of grad_corrupt . (clean - corrupt).
    """
    c, k = token_pair(subject, clean, corrupt)
    layers = check_component(subject, component, layers)
    P = k.input_ids.shape[1]
    pos, heads, axes = _layout(subject, component, layers, positions, by_head, per_position, P)
    sites = [Site(layer, component) for layer in layers]
    with torch.no_grad():
        clean_logits, cc = subject.run(c, cache=sites)
    clean_v = float(metric_value(metric, clean_logits))
    acts: dict[Site, Tensor] = {}
    deltas: dict[Site, Tensor] = {}

    def grab(x, s):
        # Adding a zero leaf gives d metric / d activation without touching parameter .grad.
        # In place for the same reason as in the exact sweep (resid_mid aliases ln2's input).
        d = torch.zeros_like(x, requires_grad=True)
        acts[s], deltas[s] = x.detach().clone(), d
        x.add_(d)
        return x

    with torch.enable_grad():
        logits, _ = subject.run(k, hooks=[(s, lambda x, s=s: grab(x, s)) for s in sites])
        m = metric_value(metric, logits)
        grads = torch.autograd.grad(m, [deltas[s] for s in sites], allow_unused=True)
    corrupt_v = float(m.detach())
    vals = []
    for s, g in zip(sites, grads, strict=True):
        g = torch.zeros_like(acts[s]) if g is None else g
        contrib = (g * (cc[s] - acts[s])).sum(0)  # pos ... ; summed over batch
        if heads is None:
            v = contrib.sum(-1)[pos]  # [pos]
        elif pos is None:
            v = contrib.sum((0, -1))  # [head]
        else:
            v = contrib.sum(-1)[pos]  # [pos head]
        vals.append(v)
    values = torch.stack(vals).detach() + corrupt_v
    return PatchingSweep(component, "attribution", values, axes, tuple(layers), tuple(pos or ()),
                         tuple(heads or ()), clean_v, corrupt_v, metric_name(metric), _labels(subject, c), 0)


def rank_agreement(exact: PatchingSweep, approx: PatchingSweep, *, informative_only: bool = False) -> float:
    """Spearman correlation of the two sweeps' cell effects.

    `informative_only` drops cells whose exact effect is exactly zero (activations identical in
    clean and corrupt, e.g. before the first differing token), which would inflate agreement.
    """
    from scipy.stats import spearmanr

    if exact.values.shape != approx.values.shape:
        raise ValueError(f"approx: sweep shape {tuple(approx.values.shape)} differs from exact "
                         f"{tuple(exact.values.shape)}; run both with the same layers/positions/heads")
    a, b = exact.effect.reshape(-1), approx.effect.reshape(-1)
    if informative_only:
        keep = a != 0
        a, b = a[keep], b[keep]
    if a.numel() < 3:
        raise ValueError("rank_agreement: fewer than 3 cells to correlate")
    return float(spearmanr(a.numpy(), b.numpy()).statistic)
