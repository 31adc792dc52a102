"""The context-sensitivity knob: a 1-D subspace found by DAS (or difference of means), and its constants.

    knob = fit_knob(subject, train_pairs, Site(2, "resid_post"), val=val, test=test)
    knob.direction, knob.c_ctx, knob.c_prior, knob.interchange_acc
    m = pair_metrics(subject, test, steer=knob.steer())      # intent removed, knob set instead

DAS (Geiger et al. 2024; the knob paper's recipe): a unit vector u at `site`, last token, trained so
that the interchange h_T <- h_T - (u.h_T) u + (u.h_S) u, with S the same context and query under
the opposite intent, makes the frozen model give S's answer (cross-entropy on it). Only items the
model answers right under both intents train it. u is a *normalised parameter*, u = v / |v|: for
rank 1 the orthogonal group's Stiefel manifold is just the unit sphere, and the normalisation's
gradient is the tangent projection of the plain gradient, so this is the same optimisation as
`torch.nn.utils.parametrizations.orthogonal` on a `d x 1` matrix without a matrix exponential per
step. TransformerLens's `fit_das` (which does use `orthogonal`) is the parity reference
(`workbench.engines.tl_das`, compared in the tests).

u is oriented so that prior-intent prompts project higher than context-intent ones. Steering sets
the projection of the last token on every forward pass (and KV-cached decoding step): c_ctx for
"answer from context", c_prior for "answer from memory", each chosen on the validation split as
the value that maximises that intent's accuracy on the bare (instruction-free) prompts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from probes.knob_data import IntentPairs, confident, last_token_argmax
from workbench.interventions import SetProjection
from workbench.results import Result
from workbench.sites import Site

_RESID = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def check_site(subject, site: Site) -> Site:
    if not isinstance(site, Site):
        raise ValueError(f"site: expected a workbench.Site, got {type(site).__name__}")
    if site.component not in _RESID:
        raise ValueError(f"site: the knob lives in a d_model-wide stream, one of {list(_RESID)}; got {site}")
    return subject.check_site(site)


def check_direction(subject, direction) -> Tensor:
    d = torch.as_tensor(direction, dtype=torch.float32).detach().flatten()
    if d.numel() != subject.arch.d_model:
        raise ValueError(f"direction: expected size d_model={subject.arch.d_model} of {subject.name!r}, "
                         f"got {d.numel()}")
    if not torch.isfinite(d).all():
        raise ValueError("direction: contains NaN or inf")
    if d.norm() == 0:
        raise ValueError("direction: has zero norm; expected a non-zero vector")
    return d / d.norm()


@torch.no_grad()
def last_token_acts(subject, prompts, site: Site, *, batch_size: int = 128) -> Tensor:
    """`batch d_model` activation at `site`, last token."""
    out = []
    for i in range(0, len(prompts), batch_size):
        _, cache = subject.run(subject.tokenize(list(prompts[i:i + batch_size])), cache=[site])
        out.append(cache[site][:, -1].float().cpu())
    return torch.cat(out)


def interchange_rows(pairs: IntentPairs, tokenizer) -> tuple[list[str], list[str], Tensor]:
    """Both directions of every item: (targets, sources, source answers)."""
    ids_c, ids_p = pairs.answer_ids(tokenizer)
    return (list(pairs.prompt_ctx) + list(pairs.prompt_prior), list(pairs.prompt_prior) + list(pairs.prompt_ctx),
            torch.cat([ids_p, ids_c]))


def _interchange_hook(u: Tensor, h_src: Tensor):
    def fn(x):
        x = x.clone()
        last = x[:, -1]
        x[:, -1] = last + ((h_src.to(x.dtype) - last) @ u.to(x.dtype))[:, None] * u.to(x.dtype)
        return x
    return fn


@torch.no_grad()
def interchange_logits(subject, targets, sources, site: Site, direction: Tensor, *, batch_size: int = 64) -> Tensor:
    """Last-token logits `batch d_vocab` of `targets` with u.h set to the matching source's u.h at `site`."""
    u = check_direction(subject, direction)
    h = last_token_acts(subject, sources, site, batch_size=batch_size)
    out = []
    for i in range(0, len(targets), batch_size):
        logits, _ = subject.run(subject.tokenize(list(targets[i:i + batch_size])),
                                hooks=[(site, _interchange_hook(u, h[i:i + batch_size]))])
        out.append(logits[:, -1].float().cpu())
    return torch.cat(out)


def interchange_accuracy(subject, pairs: IntentPairs, site: Site, direction: Tensor, *, batch_size: int = 64) -> float:
    """Share of (target, source) rows answered with the source's answer after the interchange on u."""
    tg, src, ans = interchange_rows(pairs, subject.tokenizer)
    pred = interchange_logits(subject, tg, src, site, direction, batch_size=batch_size).argmax(-1)
    return float((pred == ans).float().mean())


def fit_das_direction(subject, pairs: IntentPairs, site: Site, *, epochs: int = 1, batch_size: int = 8,
                      lr: float = 1e-3, seed: int = 0, progress: bool = False) -> tuple[Tensor, tuple[float, ...]]:
    """Train u (see module doc); returns (unit direction, mean loss per epoch). Model stays frozen."""
    tg, src, ans = interchange_rows(pairs, subject.tokenizer)
    h_src = last_token_acts(subject, src, site)
    g = torch.Generator().manual_seed(seed)
    # start on the unit sphere: Adam moves every coordinate by ~lr per step, so a unit-norm v turns
    # u by ~lr*sqrt(d) per step; a randn-scaled v (norm sqrt(d)) would turn it sqrt(d) times slower
    v0 = torch.randn(subject.arch.d_model, generator=g)
    v = torch.nn.Parameter(v0 / v0.norm())
    opt = torch.optim.Adam([v], lr=lr)
    rng = random.Random(seed)
    params = list(subject.hf_model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    losses = []
    steps = epochs * math.ceil(len(tg) / batch_size)
    bar = tqdm(total=steps, desc=f"DAS {subject.name} {site}", disable=not progress, leave=False)
    try:
        for _ in range(epochs):
            order = list(range(len(tg)))
            rng.shuffle(order)
            total = 0.0
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                u = v / v.norm()
                logits, _ = subject.run(subject.tokenize([tg[j] for j in idx]),
                                        hooks=[(site, _interchange_hook(u, h_src[idx]))])
                loss = F.cross_entropy(logits[:, -1].float(), ans[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                bar.update(1)
            losses.append(total / len(order))
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
        bar.close()
    return (v / v.norm()).detach(), tuple(losses)


def diff_means_direction(subject, pairs: IntentPairs, site: Site) -> Tensor:
    """mean(prior) - mean(context) of the last-token activation, normalised."""
    d = last_token_acts(subject, pairs.prompt_prior, site).mean(0) - last_token_acts(subject, pairs.prompt_ctx, site).mean(0)
    return check_direction(subject, d)


@torch.no_grad()
def projections(subject, pairs: IntentPairs, site: Site, direction: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """u.h at the last token for the context-intent and the prior-intent prompts."""
    u = check_direction(subject, direction)
    return ((last_token_acts(subject, pairs.prompt_ctx, site) @ u).numpy(),
            (last_token_acts(subject, pairs.prompt_prior, site) @ u).numpy())


def default_grid(proj: np.ndarray, n: int = 17, span: float = 4.0) -> np.ndarray:
    """Symmetric steering values out to `span` x the largest |projection| seen."""
    m = float(np.abs(proj).max()) if len(proj) else 1.0
    return np.linspace(-span * max(m, 1e-3), span * max(m, 1e-3), n)


@torch.no_grad()
def choose_constants(subject, val: IntentPairs, site: Site, direction: Tensor, grid) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(c_ctx, c_prior, acc_ctx per grid value, acc_prior per grid value) on the bare val prompts.

    One pass per grid value serves both intents: the bare prompt is the same for both rows.
    """
    u = check_direction(subject, direction)
    ids_c, ids_p = val.answer_ids(subject.tokenizer)
    acc_c, acc_p = [], []
    for c in grid:
        pred = last_token_argmax(subject, val.prompt_bare, [SetProjection(site, u, float(c), positions=-1)])
        acc_c.append(float((pred == ids_c).float().mean()))
        acc_p.append(float((pred == ids_p).float().mean()))
    acc_c, acc_p = np.array(acc_c), np.array(acc_p)
    return float(grid[int(acc_c.argmax())]), float(grid[int(acc_p.argmax())]), acc_c, acc_p


@dataclass(frozen=True)
class Knob(Result):
    """A direction at a site, its steering constants and how it was measured."""

    method: str
    subject: str
    site: Site
    direction: Tensor          # d_model, unit
    c_ctx: float               # projection value that means "answer from context"
    c_prior: float             # ... "answer from memory"
    proj_ctx: np.ndarray       # test prompts with the context instruction: u.h
    proj_prior: np.ndarray     # test prompts with the prior instruction
    interchange_acc: float     # test items, both directions
    interchange_acc_random: float  # the same with random unit directions (mean over seeds)
    grid: np.ndarray
    val_acc_ctx: np.ndarray    # per grid value, bare val prompts
    val_acc_prior: np.ndarray
    n_train: int               # items that trained it (answered right both ways)
    losses: tuple[float, ...]

    def interventions(self, intent: Literal["context", "prior"]) -> list[SetProjection]:
        if intent not in ("context", "prior"):
            raise ValueError(f"intent: expected 'context' or 'prior', got {intent!r}")
        return [SetProjection(self.site, self.direction, self.c_ctx if intent == "context" else self.c_prior,
                              positions=-1)]

    def steer(self) -> tuple[list[SetProjection], list[SetProjection]]:
        """The `steer=` argument of `pair_metrics`."""
        return self.interventions("context"), self.interventions("prior")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"intent": ["context"] * len(self.proj_ctx) + ["prior"] * len(self.proj_prior),
                             "projection": np.concatenate([self.proj_ctx, self.proj_prior]),
                             "method": self.method, "subject": self.subject, "site": str(self.site)})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        for name, x in (("context", self.proj_ctx), ("prior", self.proj_prior)):
            fig.add_trace(go.Histogram(x=x, name=f"intent: {name}", opacity=0.6, nbinsx=30))
        for name, c in (("c_ctx", self.c_ctx), ("c_prior", self.c_prior)):
            fig.add_vline(x=c, line_dash="dash", annotation_text=name)
        fig.update_layout(barmode="overlay", title=f"{self.method} knob at {self.site} on {self.subject}: "
                                                   f"projections (interchange acc {self.interchange_acc:.2f})",
                          xaxis_title="u . h (last token)")
        return fig


def random_direction(d_model: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d_model, generator=g)
    return v / v.norm()


def fit_knob(subject, pairs: IntentPairs, site: Site, *, method: Literal["das", "diff_means"] = "das",
             val: IntentPairs | None = None, test: IntentPairs | None = None, epochs: int = 1,
             batch_size: int = 8, lr: float = 1e-3, seed: int = 0, grid=None,
             random_seeds: tuple[int, ...] = (0, 1, 2), keep: Literal["confident", "all"] = "confident",
             progress: bool = False) -> Knob:
    """Fit the knob on `pairs`; constants on `val`, measurements on `test` (default: 60/20/20 split)."""
    if not isinstance(pairs, IntentPairs):
        raise ValueError(f"pairs: expected IntentPairs (see intent_pairs), got {type(pairs).__name__}")
    if method not in ("das", "diff_means"):
        raise ValueError(f"method: expected 'das' or 'diff_means', got {method!r}")
    if keep not in ("confident", "all"):
        raise ValueError(f"keep: expected 'confident' or 'all', got {keep!r}")
    for name, x in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(x, int) or x < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {x!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr!r}")
    site = check_site(subject, site)
    if (val is None) != (test is None):
        raise ValueError("val, test: give both held-out splits or neither (then pairs is split 60/20/20)")
    if val is None:
        pairs, val, test = pairs.split((0.6, 0.2, 0.2), seed=seed)
    assert test is not None
    train = confident(subject, pairs) if keep == "confident" else pairs
    if method == "das":
        u, losses = fit_das_direction(subject, train, site, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                      progress=progress)
    else:
        u, losses = diff_means_direction(subject, train, site), ()
    pc, pp = projections(subject, train, site, u)
    if pp.mean() < pc.mean():  # orient: prior projects higher
        u = -u
    test_ok = confident(subject, test) if keep == "confident" else test
    ia = interchange_accuracy(subject, test_ok, site, u)
    ia_rand = float(np.mean([interchange_accuracy(subject, test_ok, site, random_direction(u.numel(), s))
                             for s in random_seeds])) if random_seeds else float("nan")
    pc_t, pp_t = projections(subject, test, site, u)
    grid = default_grid(np.concatenate([pc_t, pp_t])) if grid is None else np.asarray(grid, dtype=float)
    c_ctx, c_prior, acc_c, acc_p = choose_constants(subject, val, site, u, grid)
    return Knob(method=method, subject=subject.name, site=site, direction=u, c_ctx=c_ctx, c_prior=c_prior,
                proj_ctx=pc_t, proj_prior=pp_t, interchange_acc=ia, interchange_acc_random=ia_rand, grid=grid,
                val_acc_ctx=acc_c, val_acc_prior=acc_p, n_train=len(train), losses=losses)
