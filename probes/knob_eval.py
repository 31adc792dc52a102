"""Does the knob steer, does it transfer, and does separation track performance?

    sep = separation(knob, subject, pairs)              # Cohen's d (and AUROC) of u.h by intent
    tab = steering_table([base, tuned], {"das": knob}, val, test, random_seeds=(0, 1, 2))

Separation statistic: the knob paper plots the two intents' distributions of u.h and finds that
models whose distributions separate better follow the intent better. We report Cohen's d,
(mean_prior - mean_ctx) / pooled std, signed along the knob's orientation, as the headline: it
is scale-free (subjects of one family have different residual norms) and does not saturate.
AUROC is reported beside it, but it hits 1.0 as soon as the two clouds stop overlapping, which
happens for any model that merely *reads* a different intent word, so it cannot rank subjects
that all separate.

Steering is measured on the bare prompts (instruction removed); the constants are chosen on each
subject's own validation split, by the same rule for every direction (DAS, difference of means,
random unit directions at the same site), so a random direction gets the same chance to find a
value that helps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probes.knob_data import IntentPairs, bare_metrics, pair_metrics
from probes.knob_fit import (
    Knob,
    check_direction,
    check_site,
    choose_constants,
    default_grid,
    projections,
    random_direction,
)
from workbench.interventions import SetProjection
from workbench.results import Result
from workbench.sites import Site


@dataclass(frozen=True)
class Separation(Result):
    subject: str
    site: Site
    cohens_d: float
    auroc: float
    proj_ctx: np.ndarray
    proj_prior: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"subject": self.subject, "intent": ["context"] * len(self.proj_ctx) + ["prior"] * len(self.proj_prior),
                             "projection": np.concatenate([self.proj_ctx, self.proj_prior])})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure([go.Histogram(x=self.proj_ctx, name="context", opacity=0.6),
                         go.Histogram(x=self.proj_prior, name="prior", opacity=0.6)])
        fig.update_layout(barmode="overlay", title=f"{self.subject} at {self.site}: d={self.cohens_d:.2f}, "
                                                   f"AUROC={self.auroc:.2f}")
        return fig


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """(mean b - mean a) / pooled sample std."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError(f"cohens_d: need >= 2 values per group, got {na} and {nb}")
    pooled = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return float((b.mean() - a.mean()) / max(pooled, 1e-12))


def auroc(a: np.ndarray, b: np.ndarray) -> float:
    """P(random b > random a) + 0.5 P(tie): the Mann-Whitney form of the ROC area."""
    diff = b[:, None] - a[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def separation(knob: Knob, subject, pairs: IntentPairs) -> Separation:
    """How distinctly `subject`'s two intents separate along `knob.direction` (any subject of the family)."""
    if not isinstance(pairs, IntentPairs):
        raise ValueError(f"pairs: expected IntentPairs (see intent_pairs), got {type(pairs).__name__}")
    site = check_site(subject, knob.site)
    u = check_direction(subject, knob.direction)
    pc, pp = projections(subject, pairs, site, u)
    return Separation(subject=subject.name, site=site, cohens_d=cohens_d(pc, pp), auroc=auroc(pc, pp),
                      proj_ctx=pc, proj_prior=pp)


@dataclass(frozen=True)
class SteeringTable(Result):
    """One row per (subject, condition): PairAcc etc. on the test split."""

    frame: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> pd.DataFrame:
        """Random seeds averaged (mean, std) beside the other conditions, pair_acc only."""
        f = self.frame
        return (f.groupby(["subject", "condition"], sort=False)["pair_acc"].agg(["mean", "std", "count"])
                .reset_index())

    def plot(self):
        import plotly.graph_objects as go

        s = self.summary()
        fig = go.Figure()
        for cond in s["condition"].unique():
            d = s[s["condition"] == cond]
            fig.add_trace(go.Bar(x=d["subject"], y=d["mean"], name=cond,
                                 error_y=dict(type="data", array=d["std"].fillna(0))))
        fig.update_layout(barmode="group", yaxis_title="PairAcc (test)", yaxis_range=[0, 1],
                          title="Steering with the intent instruction removed")
        return fig


def steering_table(subjects: Sequence, knobs: Mapping[str, Knob], val: IntentPairs, test: IntentPairs, *,
                   random_seeds: Sequence[int] = (0, 1, 2), grid_size: int = 17) -> SteeringTable:
    """PairAcc with the instruction, without it, and steered by each knob and by random directions."""
    if not knobs:
        raise ValueError("knobs: expected at least one named Knob")
    site = next(iter(knobs.values())).site
    rows = []
    for subject in subjects:
        for m in (pair_metrics(subject, test), bare_metrics(subject, test)):
            rows.append(_row(m, m.condition, None, np.nan, np.nan))
        dirs: list[tuple[str, int | None, Site, np.ndarray]] = [(k, None, kn.site, kn.direction) for k, kn in knobs.items()]
        dirs += [("random", s, site, random_direction(subject.arch.d_model, s)) for s in random_seeds]
        for name, seed, st, d in dirs:
            st = check_site(subject, st)
            u = check_direction(subject, d)
            pc, pp = projections(subject, val, st, u)
            c_ctx, c_prior, _, _ = choose_constants(subject, val, st, u,
                                                    default_grid(np.concatenate([pc, pp]), n=grid_size))
            steer = ([SetProjection(st, u, c_ctx, positions=-1)], [SetProjection(st, u, c_prior, positions=-1)])
            m = pair_metrics(subject, test, steer=steer, condition=f"steered: {name}")
            rows.append(_row(m, m.condition, seed, c_ctx, c_prior))
    return SteeringTable(frame=pd.DataFrame(rows))


def _row(m, condition: str, seed, c_ctx: float, c_prior: float) -> dict:
    return {"subject": m.subject, "condition": condition, "seed": seed, "pair_acc": m.pair_acc,
            "context_acc": m.context_acc, "prior_acc": m.prior_acc, "memorisation_ratio": m.memorisation_ratio,
            "c_ctx": c_ctx, "c_prior": c_prior, "n_pairs": m.n_pairs}
