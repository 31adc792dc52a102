"""Path patching (Wang et al. 2022; Prakash et al. 2024) and the backwards group search.

Score of a sender head = (p_patched - p_clean) / p_clean of the correct token, where in the
clean run the sender's `z` at the sender position comes from the corrupted prompt, every
other head's `z` is frozen to its clean value (MLPs recompute), and then either
- the logits of that run are read (receiver = logits), or
- the receivers' query/key/value at the receiver position are taken from that run and patched
  into a fresh clean run, which is read.
Many senders share one forward: the clean batch is tiled, row block j patches sender j.

Group search, backwards from the logits (entity tracking): A = heads direct to the logits at
the last token; B = heads into A's queries at the last token; C = heads into B's values at the
query label; D = heads into C's values at the earlier mention. A head joins a group when
patching it lowers p(correct) by at least `threshold` (1 %) of its clean value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.engines.tl_patching import raw_name, run_raw
from workbench.patching import answer_ids, token_pair
from workbench.results import Result
from workbench.sites import Site

Head = tuple[int, int]


@dataclass(frozen=True)
class Receiver:
    """Where a path ends: `Receiver("logits")` or `Receiver("q", layer, head)` (also "k", "v")."""

    kind: Literal["logits", "q", "k", "v"]
    layer: int | None = None
    head: int | None = None

    def __post_init__(self):
        if self.kind not in ("logits", "q", "k", "v"):
            raise ValueError(f"Receiver.kind: expected 'logits', 'q', 'k' or 'v', got {self.kind!r}")
        if self.kind != "logits" and (self.layer is None or self.head is None):
            raise ValueError(f"Receiver({self.kind!r}): needs a layer and a head")

    def __str__(self) -> str:
        return "logits" if self.kind == "logits" else f"L{self.layer}H{self.head}.{self.kind}"


def positions_tensor(pos: Any, batch: int, n_pos: int, name: str = "positions") -> Tensor:
    """An int or a per-row sequence of positions -> `batch` long tensor of non-negative indices."""
    t = torch.full((batch,), int(pos)) if isinstance(pos, int) else torch.as_tensor(pos).long().reshape(-1)
    if t.shape[0] != batch:
        raise ValueError(f"{name}: expected an int or {batch} per-row positions, got {t.shape[0]}")
    if ((t < -n_pos) | (t >= n_pos)).any():
        raise ValueError(f"{name}: positions out of range for prompts of {n_pos} tokens")
    return t % n_pos


@dataclass(frozen=True)
class PathPatchingResult(Result):
    """`scores[layer, head]`: relative change of p(correct); NaN where a head was not a sender."""

    scores: Tensor
    receivers: tuple[str, ...]
    p_clean: float
    sender_position: str

    def to_frame(self) -> pd.DataFrame:
        L, H = self.scores.shape
        rows = [{"layer": layer, "head": h, "score": float(self.scores[layer, h]), "receivers": ",".join(self.receivers),
                 "sender_position": self.sender_position} for layer in range(L) for h in range(H)]
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.express as px

        s = self.scores.float().numpy()
        return px.imshow(s, labels={"x": "head", "y": "layer", "color": "dp/p"}, aspect="auto",
                         color_continuous_scale="RdBu", zmin=-1, zmax=1,
                         title=f"path patching into {', '.join(self.receivers)[:60]} ({self.sender_position})")

    def top(self, threshold: float = 0.01, max_heads: int | None = None) -> tuple[Head, ...]:
        """Heads whose patch lowers p(correct) by >= threshold (relative), most harmful first."""
        s = self.scores  # NaN = not a sender: never selected (even at threshold 0)
        cand = [(float(s[layer, h]), layer, h) for layer in range(s.shape[0]) for h in range(s.shape[1])
                if not torch.isnan(s[layer, h]) and s[layer, h] <= -threshold]
        cand.sort()
        return tuple((layer, h) for _, layer, h in cand[:max_heads])


def _prob(logits: Tensor, ans: Tensor, B: int) -> Tensor:
    """Mean p(correct) at the last position of each row block of B rows -> `K`."""
    p = logits[:, -1].float().softmax(-1)
    pc = p[torch.arange(p.shape[0]), ans.repeat(p.shape[0] // B)]
    return pc.reshape(-1, B).mean(1)


@torch.no_grad()
def path_patching(subject, clean: Any, corrupt: Any, answers: Any, *, sender_pos: Any = -1,
                  receivers: Sequence[Receiver] = (Receiver("logits"),), receiver_pos: Any = -1,
                  senders: Sequence[Head] | None = None, max_rows: int = 256, progress: bool | None = None,
                  position_name: str = "") -> PathPatchingResult:
    """Score every sender head by path patching into `receivers` (see module doc)."""
    c, k = token_pair(subject, clean, corrupt)
    B, P = c.input_ids.shape
    a = subject.arch
    ans = answer_ids(subject, answers)
    if ans.shape[0] != B:
        raise ValueError(f"answers: expected {B} answers (one per prompt), got {ans.shape[0]}")
    receivers = list(receivers)
    if not receivers or not all(isinstance(r, Receiver) for r in receivers):
        raise ValueError("receivers: expected a non-empty list of Receiver values")
    to_logits = any(r.kind == "logits" for r in receivers)
    if to_logits and len(receivers) > 1:
        raise ValueError("receivers: 'logits' cannot be combined with head receivers")
    # Heads are frozen up to the last receiver (a receiver head's own z feeds later receivers).
    r_max = a.n_layers if to_logits else max(r.layer for r in receivers)  # type: ignore[type-var]
    for r in receivers:
        if r.kind != "logits" and not (0 <= r.layer < a.n_layers and 0 <= r.head < a.n_heads):  # type: ignore[operator]
            raise ValueError(f"receivers: {r} is outside the model ({a.n_layers} layers, {a.n_heads} heads)")
    # A sender can reach every receiver above it; receivers at or below its layer are simply
    # unaffected (their inputs stay clean), so senders may sit anywhere below the last receiver.
    if senders is None:
        senders = [(layer, h) for layer in range(r_max) for h in range(a.n_heads)]
    senders = [(int(layer), int(h)) for layer, h in senders]
    bad = [s for s in senders if not (0 <= s[0] < r_max and 0 <= s[1] < a.n_heads)]
    if bad:
        raise ValueError(f"senders: {bad[:3]} must be heads in layers below the receivers (below the last "
                         f"receiver's layer, < {r_max})")
    if max_rows < 1:
        raise ValueError(f"max_rows: expected >= 1, got {max_rows}")
    spos = positions_tensor(sender_pos, B, P, "sender_pos")
    rpos = positions_tensor(receiver_pos, B, P, "receiver_pos")
    zs = [Site(layer, "z") for layer in range(a.n_layers)]
    clean_logits, cz = subject.run(c, cache=zs)
    _, kz = subject.run(k, cache=zs)
    p_clean = float(_prob(clean_logits, ans, B)[0])
    group = a.n_heads // a.n_kv_heads  # query heads per kv head: k/v patches reach the whole group

    scores = torch.full((a.n_layers, a.n_heads), float("nan"))
    per = max(1, max_rows // B)
    chunks = [senders[i:i + per] for i in range(0, len(senders), per)]
    ctx = dict(B=B, cz=cz, kz=kz, spos=spos, rpos=rpos, r_max=r_max, receivers=receivers, group=group)
    show = progress if progress is not None else len(chunks) > 8
    for chunk in tqdm(chunks, desc="path patching", disable=not show, leave=False):
        p = _chunk_probs(subject, c, ans, chunk, **ctx)
        for j, (sl, sh) in enumerate(chunk):
            scores[sl, sh] = (p[j] - p_clean) / p_clean
    name = position_name or (str(sender_pos) if isinstance(sender_pos, int) else "per-row")
    return PathPatchingResult(scores, tuple(str(r) for r in receivers), p_clean, name)


def _chunk_probs(subject, c, ans, chunk, *, B, cz, kz, spos, rpos, r_max, receivers, group) -> Tensor:
    """p(correct) for each sender of `chunk`, all in one tiled forward (plus one for head receivers)."""
    K = len(chunk)
    ar = torch.arange(B)
    ids, mask = c.input_ids.repeat(K, 1), c.attention_mask.repeat(K, 1)

    def freeze(x, layer):
        # Every head frozen to clean, then each row block's sender gets its corrupted z.
        x.copy_(cz[Site(layer, "z")].repeat(K, 1, 1, 1))
        for j, (sl, sh) in enumerate(chunk):
            if sl == layer:
                x[j * B + ar, spos, sh] = kz[Site(layer, "z")][ar, spos, sh]
        return x

    hooks = [(Site(layer, "z"), lambda x, layer=layer: freeze(x, layer)) for layer in range(r_max)]
    if receivers[0].kind == "logits":
        return _prob(run_raw(subject, ids, mask, hooks=hooks), ans, B)
    seen: dict[str, Tensor] = {}
    names = sorted({raw_name(r.layer, r.kind) for r in receivers})
    run_raw(subject, ids, mask, hooks=hooks, raw=[(n, lambda x, n=n: seen.__setitem__(n, x.clone())) for n in names])
    rows, rp = torch.arange(K * B), rpos.repeat(K)

    def put(x, name):
        for r in receivers:
            if raw_name(r.layer, r.kind) == name:
                h = r.head if r.kind == "q" else r.head // group  # k/v live on the shared kv head
                x[rows, rp, h] = seen[name][rows, rp, h]
        return x

    return _prob(run_raw(subject, ids, mask, raw=[(n, lambda x, n=n: put(x, n)) for n in names]), ans, B)


@dataclass(frozen=True)
class GroupSearch(Result):
    """Groups A-D of the backwards search, each with its path-patching scores."""

    groups: dict
    positions: dict
    scores: dict
    threshold: float

    def to_frame(self) -> pd.DataFrame:
        frames = []
        for g, res in self.scores.items():
            df = res.to_frame()
            df["group"] = g
            df["in_group"] = [(r.layer, r.head) in set(self.groups[g]) for r in df.itertuples()]
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = list(self.scores)
        fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=[f"group {g}" for g in names])
        for i, g in enumerate(names):
            fig.add_trace(go.Heatmap(z=self.scores[g].scores.float().numpy(), colorscale="RdBu", zmin=-1, zmax=1,
                                     showscale=i == 0), row=1, col=i + 1)
        fig.update_layout(title="path patching scores by group (layer x head)")
        return fig

    def circuit(self):
        from workbench.circuits import Circuit

        return Circuit(groups={g: tuple(map(tuple, h)) for g, h in self.groups.items() if h},
                       positions={g: self.positions[g] for g in self.groups if self.groups[g]})


# (group, receiver kind into the previous group, sender/receiver position key)
ENTITY_GROUPS = (("A", "logits", "last"), ("B", "q", "last"), ("C", "v", "query_label"), ("D", "v", "earlier"))
# The same backwards search for the organisms' adjacent format ('box f apple , ... . box f'), where
# the queried label is the last token (so there is no separate query-label position): B feeds A's
# queries at the last token, C and D A's keys and values at the answer object, E C's values at the
# label's earlier mention (the paper's group D, one step further back). A 4th field names the
# group fed.
ADJACENT_GROUPS = (("A", "logits", "last"), ("B", "q", "last", "A"), ("C", "k", "object", "A"),
                   ("D", "v", "object", "A"), ("E", "v", "earlier", "C"))


def search_groups(subject, clean: Any, corrupt: Any, answers: Any, positions: dict[str, Any], *,
                  threshold: float = 0.01, max_heads: int | None = None, spec=ENTITY_GROUPS,
                  progress: bool | None = None) -> GroupSearch:
    """Backwards search A -> B -> C -> D (see module doc). `positions` maps each key in `spec`
    ('last', 'query_label', 'earlier') to an int or per-row positions."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold: expected a relative drop in [0, 1), got {threshold}")
    missing = [e[2] for e in spec if e[2] not in positions]
    if missing:
        raise ValueError(f"positions: missing {missing}; expected keys {[e[2] for e in spec]}")
    position_of = {e[0]: e[2] for e in spec}
    groups: dict[str, tuple[Head, ...]] = {}
    scores: dict[str, PathPatchingResult] = {}
    prev: tuple[Head, ...] = ()
    for i, entry in enumerate(spec):
        g, kind, key = entry[:3]
        # An optional 4th field names the group this one feeds (default: the one before it).
        into = groups.get(entry[3], ()) if len(entry) > 3 else prev
        if i > 0 and not into:
            groups[g] = prev = ()
            continue
        if kind == "logits":
            recv = [Receiver("logits")]
            senders = None
        else:
            recv = [Receiver(kind, layer, h) for layer, h in into]
            top = max(layer for layer, _ in into)
            # A head may sit in two groups at different positions, not twice at one position.
            taken = {hd for gg, hs in groups.items() for hd in hs if position_of[gg] == key}
            senders = [(layer, h) for layer in range(top) for h in range(subject.arch.n_heads) if (layer, h) not in taken]
            if not senders:
                groups[g] = prev = ()
                continue
        res = path_patching(subject, clean, corrupt, answers, sender_pos=positions[key], receivers=recv,
                            receiver_pos=positions[key], senders=senders, progress=progress, position_name=key)
        scores[g] = res
        groups[g] = prev = res.top(threshold, max_heads)
    return GroupSearch(groups, position_of, scores, threshold)
