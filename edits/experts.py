"""MoTE (Mixture of Tunable Experts): find behaviour experts with fTRI, switch them off or on.

    scan = ftri(subject, sensitive, benign, group_by=is_refusal)   # who routes to whom, per behaviour
    scan.plot()                                                     # layers x experts heatmaps
    edit = SwitchExperts(off=scan.top(4), model_id=subject.identity())
    with edit.applied(subject):
        subject.generate(held_out)                                  # refusals drop

fTRI ("functional token resonance imaging"): per prompt, the share of tokens that select each
routed expert (statistic="count") or its mean router weight ("weight"), as a layers x experts
map; prompts are grouped by the behaviour the model actually shows when `group_by` judges its
greedy continuation; an expert's score is the behaviour-group mean minus the control mean.

`SwitchExperts` changes selection inside each family's own router rules (see
`workbench.engines.routing`): `off` experts are removed after selection with the remaining
weights renormalised ("drop_renorm", the MoTE default) or masked before top-k so the next
expert takes the slot ("mask_logits"; finite masks, never -inf); `on` experts are always
selected, with their own routing weight or, with `on_bias`, a weight raised by that bias on their
router logits (the MoTE paper's "add a large bias"). It is an activation-level edit: nothing is
written to the weights, it holds at every forward pass and KV-cached decoding step until
reverted, and an empty switch changes nothing (no hook is even installed).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pandas as pd
import torch
from torch import Tensor

from edits.base import Edit, register
from workbench.engines import routing as R
from workbench.results import Result
from workbench.routing import capture_routing, check_statistic

Mode = Literal["drop_renorm", "mask_logits"]
Pair = tuple[int, int]


def _pairs(v: Any, name: str, owner: str = "SwitchExperts.") -> tuple[Pair, ...]:
    name = owner + name
    if v is None:
        return ()
    try:
        out = tuple((int(p[0]), int(p[1])) for p in v if len(p) == 2)
        ok = len(out) == len(v) and all(not isinstance(x, bool) and int(x) == x for p in v for x in p)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected a list of (layer, expert) int pairs, got {v!r}")
    if any(x < 0 for p in out for x in p):
        raise ValueError(f"{name}: layer and expert indices must be >= 0, got {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: duplicate (layer, expert) pairs in {list(out)}")
    return tuple(sorted(out))


@register
@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class SwitchExperts(Edit):
    """Switch routed experts off (`off`) or force them on (`on`), as `(layer, expert)` pairs."""

    method: ClassVar[str] = "switch_experts"
    off: tuple[Pair, ...] = ()
    on: tuple[Pair, ...] = ()
    mode: Mode = "drop_renorm"
    # Added to the forced experts' router logits (MoTE's "add a bias"): 0 forces selection only,
    # with the expert's own routing weight; a positive bias also raises that weight.
    on_bias: float = 0.0
    model_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "off", _pairs(self.off, "off"))
        object.__setattr__(self, "on", _pairs(self.on, "on"))
        if self.mode not in ("drop_renorm", "mask_logits"):
            raise ValueError(f"SwitchExperts.mode: expected 'drop_renorm' or 'mask_logits', got {self.mode!r}")
        if not isinstance(self.on_bias, (int, float)) or not math.isfinite(self.on_bias) or self.on_bias < 0:
            raise ValueError(f"SwitchExperts.on_bias: expected a finite number >= 0, got {self.on_bias!r}")
        object.__setattr__(self, "on_bias", float(self.on_bias))
        both = sorted(set(self.off) & set(self.on))
        if both:
            raise ValueError(f"SwitchExperts: {both} are both switched off and forced on")

    @classmethod
    def example(cls, subject) -> SwitchExperts:
        """Conformance-table factory: expert 0 of the last MoE layer off."""
        R.check_moe(subject)
        return cls(off=[(subject.arch.moe_layers[-1], 0)], model_id=subject.identity())

    def per_layer(self) -> dict[int, R.LayerSwitch]:
        layers = sorted({ly for ly, _ in self.off + self.on})
        out = {}
        for ly in layers:
            off = frozenset(e for l2, e in self.off if l2 == ly)
            on = frozenset(e for l2, e in self.on if l2 == ly)
            out[ly] = R.LayerSwitch(drop=off if self.mode == "drop_renorm" else frozenset(),
                                    mask=off if self.mode == "mask_logits" else frozenset(), force=on,
                                    force_bias=self.on_bias)
        return out

    def check_compatible(self, subject) -> None:
        super().check_compatible(subject)
        R.check_moe(subject)
        a = subject.arch
        for name, pairs in (("off", self.off), ("on", self.on)):
            for ly, e in pairs:
                R.check_layer(subject, ly, name=f"SwitchExperts.{name}")
                if e >= a.n_experts:
                    raise ValueError(f"SwitchExperts.{name}: expert {e} at layer {ly} out of range; "
                                     f"valid 0..{a.n_experts - 1}")
        for ly, sw in self.per_layer().items():
            sp = R.spec(subject, ly)
            if len(sw.force) > sp.top_k:
                raise ValueError(f"SwitchExperts.on: {len(sw.force)} experts forced at layer {ly}, but only "
                                 f"top_k={sp.top_k} are selected per token")
            if sp.kind == "sigmoid" and len({sp.group_of(e) for e in sw.force}) > sp.topk_group:
                raise ValueError(f"SwitchExperts.on: the experts forced at layer {ly} span more than "
                                 f"topk_group={sp.topk_group} of the {sp.n_group} expert groups, so group-limited "
                                 "routing cannot select them all")
            if sw.mask and sp.n_experts - len(sw.mask) < sp.top_k:
                raise ValueError(f"SwitchExperts.off: mask_logits at layer {ly} leaves "
                                 f"{sp.n_experts - len(sw.mask)} experts for top_k={sp.top_k}")

    def _apply(self, subject):
        if not self.off and not self.on:
            return lambda: None  # the exact baseline: nothing installed
        return R.add_switch(subject, self.per_layer())


# --- fTRI --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FTRI(Result):
    """Per-prompt layers x experts routing maps, grouped into behaviour and control."""

    layers: tuple[int, ...]
    dense_layers: tuple[int, ...]
    n_experts: int
    statistic: str
    tokens: str
    maps: Tensor  # prompt layer n_experts
    prompts: tuple[str, ...]
    source: tuple[int, ...]  # 1: from behaviour_prompts, 0: from control_prompts
    group: tuple[int, ...]  # 1: behaviour group (shown behaviour if grouped, else = source)
    continuations: tuple[str, ...] = ()

    def _mean(self, g: int) -> Tensor:
        sel = torch.tensor(self.group) == g
        return self.maps[sel].mean(0)

    @property
    def behaviour_map(self) -> Tensor:
        return self._mean(1)

    @property
    def control_map(self) -> Tensor:
        return self._mean(0)

    @property
    def scores(self) -> Tensor:
        """`layer n_experts`: behaviour mean - control mean."""
        return self.behaviour_map - self.control_map

    def top(self, k: int, *, largest: bool = True) -> tuple[Pair, ...]:
        """The k experts with the highest (or lowest) score, as (layer, expert) pairs."""
        n = self.scores.numel()
        if not 0 <= k <= n:
            raise ValueError(f"k: expected 0 <= k <= {n} (routed experts), got {k}")
        flat = self.scores.flatten()
        order = torch.argsort(flat, descending=largest, stable=True)[:k]
        return tuple((self.layers[int(i) // self.n_experts], int(i) % self.n_experts) for i in order)

    def top_per_layer(self, n: int = 1) -> tuple[Pair, ...]:
        """The n highest-scoring experts of every layer (what `on` can force: n <= top_k)."""
        if n < 1 or n > self.n_experts:
            raise ValueError(f"n: expected 1 <= n <= {self.n_experts}, got {n}")
        idx = torch.argsort(self.scores, dim=-1, descending=True, stable=True)[:, :n]
        return tuple((ly, int(e)) for i, ly in enumerate(self.layers) for e in idx[i])

    def random(self, k: int, *, seed: int, exclude: Sequence[Pair] = ()) -> tuple[Pair, ...]:
        """k routed experts drawn uniformly (the control for `top(k)`)."""
        pool = [(ly, e) for ly in self.layers for e in range(self.n_experts) if (ly, e) not in set(exclude)]
        if not 0 <= k <= len(pool):
            raise ValueError(f"k: expected 0 <= k <= {len(pool)}, got {k}")
        return tuple(sorted(random.Random(seed).sample(pool, k)))

    def to_frame(self) -> pd.DataFrame:
        b, c, s = self.behaviour_map, self.control_map, self.scores
        rank = torch.empty(s.numel(), dtype=torch.long)
        rank[torch.argsort(s.flatten(), descending=True, stable=True)] = torch.arange(s.numel())
        rows = [{"layer": ly, "expert": e, "behaviour": float(b[i, e]), "control": float(c[i, e]),
                 "score": float(s[i, e]), "rank": int(rank[i * self.n_experts + e])}
                for i, ly in enumerate(self.layers) for e in range(self.n_experts)]
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        unit = "share of tokens" if self.statistic == "count" else "mean router weight"
        nb, nc = sum(self.group), len(self.group) - sum(self.group)
        fig = make_subplots(1, 3, subplot_titles=(f"behaviour (n={nb})", f"control (n={nc})",
                                                  "score = behaviour - control"), horizontal_spacing=0.08)
        x, y = [f"e{e}" for e in range(self.n_experts)], [f"L{ly}" for ly in self.layers]
        vmax = float(max(self.behaviour_map.max(), self.control_map.max()))
        for j, (m, cs) in enumerate(((self.behaviour_map, "Blues"), (self.control_map, "Blues"))):
            fig.add_trace(go.Heatmap(z=m.numpy(), x=x, y=y, colorscale=cs, zmin=0, zmax=vmax, showscale=False),
                          1, j + 1)
        lim = float(self.scores.abs().max()) or 1.0
        fig.add_trace(go.Heatmap(z=self.scores.numpy(), x=x, y=y, colorscale="RdBu_r", zmid=0, zmin=-lim,
                                 zmax=lim, colorbar={"title": "score"}), 1, 3)
        fig.update_layout(title=f"fTRI: expert routing ({unit}, {self.tokens} tokens); "
                                f"dense layers skipped: {list(self.dense_layers)}")
        return fig


def ftri(subject, behaviour_prompts: Sequence[str], control_prompts: Sequence[str], *,
         statistic: Literal["count", "weight"] = "count", group_by: Callable[[str], Any] | None = None,
         tokens: Literal["prompt", "last", "response", "all"] = "prompt", max_new_tokens: int = 20,
         batch_size: int = 64, progress: bool | None = None) -> FTRI:
    """Score every routed expert by how much more the behaviour group routes to it than control.

    `group_by(continuation) -> bool` (e.g. `is_refusal`): generate greedily from every prompt of
    both sets and group by the behaviour shown, not by the set a prompt came from. `tokens`: the
    routing of the prompt's tokens, of its last token only (where the model decides what to
    answer), of the generated response, or of prompt and response.
    """
    check_statistic(statistic)
    R.check_moe(subject)
    for name, ps in (("behaviour_prompts", behaviour_prompts), ("control_prompts", control_prompts)):
        if isinstance(ps, str) or not len(ps) or not all(isinstance(p, str) for p in ps):
            raise ValueError(f"{name}: expected a non-empty list of strings")
    if tokens not in ("prompt", "last", "response", "all"):
        raise ValueError(f"tokens: expected 'prompt', 'last', 'response' or 'all', got {tokens!r}")
    if group_by is not None and not callable(group_by):
        raise ValueError(f"group_by: expected a callable continuation -> bool, got {type(group_by).__name__}")
    prompts = list(behaviour_prompts) + list(control_prompts)
    source = [1] * len(behaviour_prompts) + [0] * len(control_prompts)
    conts: list[str] = []
    if group_by is not None or tokens in ("response", "all"):
        for i in range(0, len(prompts), batch_size):
            conts += subject.generate(prompts[i:i + batch_size], max_new_tokens=max_new_tokens)
    group = [int(bool(group_by(c))) for c in conts] if group_by is not None else source
    if group_by is not None and (sum(group) == 0 or sum(group) == len(group)):
        shown = "every" if sum(group) else "no"
        raise ValueError(f"group_by: the model shows the behaviour on {shown} prompt, so there is no "
                         f"{'control' if sum(group) else 'behaviour'} group to compare against")
    texts = prompts if tokens in ("prompt", "last") else [f"{p} {c}".strip() for p, c in zip(prompts, conts, strict=True)]
    r = capture_routing(subject, texts, batch_size=batch_size, keep_logits=False, progress=progress)
    mask = None
    if tokens == "last":  # left padded: the last column is every row's last real token
        mask = torch.zeros_like(r.attention_mask, dtype=torch.bool)
        mask[:, -1] = True
    elif tokens != "prompt":
        plen = torch.tensor([len(subject.tokenizer(p)["input_ids"]) for p in prompts])
        real = r.attention_mask.bool()
        k = real.long().flip(-1).cumsum(-1).flip(-1)  # tokens from here to the end (left padded)
        is_resp = k <= (real.sum(-1) - plen)[:, None]
        mask = is_resp if tokens == "response" else real
    maps = r.per_prompt(statistic, mask)
    return FTRI(layers=r.layers, dense_layers=r.dense_layers, n_experts=r.n_experts, statistic=statistic,
                tokens=tokens, maps=maps, prompts=tuple(prompts), source=tuple(source), group=tuple(group),
                continuations=tuple(conts))


def random_experts(subject, k: int, *, seed: int, exclude: Sequence[Pair] = ()) -> tuple[Pair, ...]:
    """k routed experts drawn uniformly over every MoE layer (the random-expert control)."""
    R.check_moe(subject)
    a = subject.arch
    pool = [(ly, e) for ly in a.moe_layers for e in range(a.n_experts) if (ly, e) not in set(exclude)]
    if not 0 <= k <= len(pool):
        raise ValueError(f"k: expected 0 <= k <= {len(pool)}, got {k}")
    return tuple(sorted(random.Random(seed).sample(pool, k)))


@dataclass(frozen=True)
class SwitchCurve(Result):
    """Metrics with the top-k experts switched off, and with k random experts (the control); or,
    from `force_curve`, with experts forced on at each router-logit bias (`by="bias"`)."""

    rows: pd.DataFrame  # selection ("top" | "random"), k (or bias), draw, experts, one column per metric
    metrics: tuple[str, ...]
    mode: str
    by: str = "k"

    def to_frame(self) -> pd.DataFrame:
        return self.rows.copy()

    def summary(self) -> pd.DataFrame:
        """Per k (or bias): the top value and the random draws' mean and sd, for every metric."""
        f = self.rows
        top = f[f.selection == "top"].set_index(self.by)[list(self.metrics)]
        rnd = f[f.selection == "random"].groupby(self.by)[list(self.metrics)]
        out = top.add_prefix("top_")
        if len(rnd):
            out = out.join(rnd.mean().add_prefix("random_mean_")).join(rnd.std(ddof=1).add_prefix("random_sd_"))
        return out.reset_index()

    def plot(self, metric: str | None = None):
        import plotly.graph_objects as go

        m = metric or self.metrics[0]
        sm = self.summary()
        x = sm[self.by]
        forced = self.by == "bias"
        fig = go.Figure()
        if f"random_mean_{m}" in sm:
            fig.add_trace(go.Scatter(x=x, y=sm[f"random_mean_{m}"],
                                     name=("as many random experts" if forced else "k random experts") + " (mean, sd)",
                                     error_y={"type": "data", "array": sm[f"random_sd_{m}"].fillna(0)},
                                     mode="lines+markers", line={"dash": "dash"}))
        fig.add_trace(go.Scatter(x=x, y=sm[f"top_{m}"], name="fTRI experts" if forced else "top-k fTRI experts",
                                 mode="lines+markers"))
        title = (f"{m} with experts forced on, by router-logit bias" if forced
                 else f"{m} with k experts switched off ({self.mode})")
        fig.update_layout(title=title, xaxis_title=self.by, yaxis_title=m)
        return fig


def switch_curve(subject, experts: Sequence[Pair], ks: Sequence[int],
                 measure: Callable[[Any], dict[str, float]], *, n_random: int = 5, seed: int = 0,
                 mode: Mode = "drop_renorm", progress: bool | None = None) -> SwitchCurve:
    """`measure(subject)` with the first k of `experts` off, and with k random experts off
    (`n_random` draws per k, excluding none), for each k (k=0 is the baseline)."""
    ks = [int(k) for k in ks]
    if not ks or any(k < 0 or k > len(experts) for k in ks):
        raise ValueError(f"ks: expected values in 0..{len(experts)} (the experts given), got {ks}")
    if n_random < 0:
        raise ValueError(f"n_random: expected >= 0, got {n_random}")
    plan = [("top", k, 0, tuple(experts)[:k]) for k in ks]
    plan += [("random", k, d, random_experts(subject, k, seed=seed + 1000 * k + d))
             for k in ks if k for d in range(n_random)]
    return _run_curve(subject, plan, measure, lambda k, off: SwitchExperts(off=off, mode=mode), by="k", mode=mode,
                      desc="switch curve", progress=progress)


def _run_curve(subject, plan: list[tuple[str, Any, int, tuple[Pair, ...]]], measure: Callable[[Any], dict[str, float]],
               edit_for: Callable[[Any, tuple[Pair, ...]], SwitchExperts], *, by: str, mode: str, desc: str,
               progress: bool | None) -> SwitchCurve:
    """`measure(subject)` under `edit_for(x, experts)` for each plan row `(selection, x, draw, experts)`."""
    from tqdm.auto import tqdm

    rows, names = [], None
    for sel, x, d, experts in tqdm(plan, desc=desc, disable=not (progress or progress is None and len(plan) > 8),
                                   leave=False):
        with edit_for(x, experts).applied(subject):
            got = {m: float(v) for m, v in measure(subject).items()}
        names = names or tuple(got)
        rows.append({"selection": sel, by: x, "draw": d, "experts": str(list(experts)), **got})
    return SwitchCurve(rows=pd.DataFrame(rows), metrics=names or (), mode=mode, by=by)


def force_curve(subject, experts: Sequence[Pair], biases: Sequence[float],
                measure: Callable[[Any], dict[str, float]], *, n_random: int = 5, seed: int = 0,
                progress: bool | None = None) -> SwitchCurve:
    """`measure(subject)` with `experts` forced on (`SwitchExperts(on=..., on_bias=b)`) for each
    bias b, and with random experts forced on instead (the control: per draw, as many experts in
    each layer as `experts` has there, none of them; one set of draws shared by every bias).

    Forcing with bias 0 selects the experts at their own routing weight, which is often close to
    nothing on inputs the router keeps away from them; a moderate bias gives them a real share,
    and a large one hands them the whole layer (the model usually stops making sense). The curve
    shows where, if anywhere, the behaviour appears, against the same push on random experts.
    """
    R.check_moe(subject)
    experts = _pairs(experts, "experts", owner="force_curve: ")
    if not experts:
        raise ValueError("experts: expected at least one (layer, expert) pair to force on")
    bs = [float(b) for b in biases]
    if not bs or any(not math.isfinite(b) or b < 0 for b in bs):
        raise ValueError(f"biases: expected a non-empty list of finite numbers >= 0, got {list(biases)}")
    if n_random < 0:
        raise ValueError(f"n_random: expected >= 0, got {n_random}")
    SwitchExperts(on=experts).check_compatible(subject)
    per_layer = Counter(ly for ly, _ in experts)
    draws = []
    for d in range(n_random):
        rng = random.Random(seed + d)
        pick = []
        for ly, n in sorted(per_layer.items()):
            pool = [e for e in range(subject.arch.n_experts) if (ly, e) not in experts]
            pick += [(ly, e) for e in rng.sample(pool, n)]
        draws.append(tuple(pick))
    plan = [("top", b, 0, experts) for b in bs] + [("random", b, d, on) for b in bs for d, on in enumerate(draws)]
    return _run_curve(subject, plan, measure, lambda b, on: SwitchExperts(on=on, on_bias=b), by="bias", mode="on",
                      desc="force curve", progress=progress)


__all__ = ["FTRI", "SwitchCurve", "SwitchExperts", "force_curve", "ftri", "random_experts", "switch_curve"]
