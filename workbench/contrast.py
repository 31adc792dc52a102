"""Contrastive generative exploration (CGE): what is new in a fine-tune, without its data.

Isonuma & Titov 2025. Generate from the tuned model, but rank each next token by how much
*more* likely the tuned model finds it than the base model (`log p_tuned - gamma log p_base`),
among tokens the tuned model itself finds plausible. Text the fine-tune made likely and the
base did not (new domains, new styles) comes out first.

    res = contrastive_generate(pair, n=16, max_new_tokens=24)
    res.to_frame()        # one row per generation, sorted as generated; `score` ranks novelty
    res.plot()            # tokens coloured by per-token contrast
    it = iterative_cge(pair, n=20, lr=1e-3)   # each example pushes the next one elsewhere
    novelty_scores(pair, my_texts).to_frame() # rank your own candidate data

Decoding loops are in `contrast_decode.py`, evaluation (detection rate, coverage) in
`contrast_eval.py`.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.contrast_decode import Decoded, beam, hf_twin, sample
from workbench.models import ModelPair
from workbench.results import Result

Decoding = Literal["sample", "beam"]


# --- configuration ----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CGEConfig:
    n: int
    max_new_tokens: int
    alpha: float = 0.1
    gamma: float = 1.0
    decoding: Decoding = "sample"
    num_beams: int = 4
    temperature: float = 1.0
    seed: int = 0
    prompt: str | None = None

    def __post_init__(self):
        _pos_int("n", self.n)
        _pos_int("max_new_tokens", self.max_new_tokens)
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"alpha: expected a number in (0, 1] (plausibility: keep tokens with "
                             f"p_tuned >= alpha * max p_tuned), got {self.alpha!r}")
        if not isinstance(self.gamma, (int, float)) or not math.isfinite(self.gamma) or self.gamma < 0:
            raise ValueError(f"gamma: expected a finite number >= 0 (weight of log p_base), got {self.gamma!r}")
        if self.decoding not in ("sample", "beam"):
            raise ValueError(f"decoding: expected 'sample' or 'beam', got {self.decoding!r}")
        _pos_int("num_beams", self.num_beams)
        if self.decoding == "beam" and self.num_beams < self.n:
            raise ValueError(f"num_beams: beam search returns its n best hypotheses, so num_beams must be "
                             f">= n; got num_beams={self.num_beams}, n={self.n}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature: expected a number > 0, got {self.temperature!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed: expected an int, got {self.seed!r}")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"prompt: expected a string or None (generate from BOS), got {type(self.prompt).__name__}")


def _pos_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {v!r}")


def _check_pair(pair: Any) -> ModelPair:
    if not isinstance(pair, ModelPair):
        raise ValueError(f"pair: expected a workbench.ModelPair(base, tuned), got {type(pair).__name__}")
    for nm, s in (("base", pair.base), ("tuned", pair.tuned)):
        if s.active:
            raise ValueError(f"pair.{nm} has active interventions {list(s.active)}; contrastive decoding runs the "
                             "HF weights directly and would ignore them. Leave the `intervene` block, or apply a "
                             "weight edit instead")
    return pair


# --- results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CGEResult(Result):
    """Generations with per-token contrast `log p_tuned - log p_base` (EOS excluded).

    `scores[i]` = sum of `token_scores[i]` = log p_tuned(x) - log p_base(x) of the new tokens
    given the prompt; `ended[i]`: the generation stopped at EOS rather than at max_new_tokens.
    """

    texts: list[str]
    tokens: list[list[str]]
    token_ids: list[list[int]]
    token_scores: list[list[float]]
    scores: list[float]
    ended: list[bool]
    config: dict = field(default_factory=dict)
    method: str = "cge"

    def __len__(self) -> int:
        return len(self.texts)

    def to_frame(self, level: Literal["sequence", "token"] = "sequence") -> pd.DataFrame:
        if level == "token":
            rows = [dict(index=i, position=j, token=t, token_id=k, contrast=c)
                    for i, (ts, ks, cs) in enumerate(zip(self.tokens, self.token_ids, self.token_scores, strict=True))
                    for j, (t, k, c) in enumerate(zip(ts, ks, cs, strict=True))]
            return pd.DataFrame(rows, columns=["index", "position", "token", "token_id", "contrast"])
        if level != "sequence":
            raise ValueError(f"level: expected 'sequence' or 'token', got {level!r}")
        n_tok = [len(t) for t in self.token_ids]
        return pd.DataFrame(dict(
            index=range(len(self)), method=self.method, text=self.texts, score=self.scores, n_tokens=n_tok,
            score_per_token=[s / max(k, 1) for s, k in zip(self.scores, n_tok, strict=True)], ended=self.ended,
        ))

    def top(self, k: int = 10) -> list[int]:
        """Indices of the k generations with the highest sequence score."""
        return sorted(range(len(self)), key=lambda i: -self.scores[i])[:k]

    def plot(self, k: int = 12):
        """The k highest-scoring generations, one row each, tokens coloured by contrast."""
        import plotly.graph_objects as go

        idx = self.top(k)
        width = max((len(self.tokens[i]) for i in idx), default=0)
        z = [[self.token_scores[i][j] if j < len(self.tokens[i]) else None for j in range(width)] for i in idx]
        txt = [[self.tokens[i][j] if j < len(self.tokens[i]) else "" for j in range(width)] for i in idx]
        lim = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
        fig = go.Figure(go.Heatmap(
            z=z, text=txt, texttemplate="%{text}", colorscale="RdBu", reversescale=True, zmid=0,
            zmin=-lim, zmax=lim, colorbar=dict(title="log p_tuned<br>- log p_base"),
            hovertemplate="%{text}: %{z:.2f}<extra></extra>"))
        fig.update_layout(title=f"{self.method}: top {len(idx)} generations by contrast score",
                          xaxis_title="new token", yaxis=dict(
                              tickvals=list(range(len(idx))), autorange="reversed",
                              ticktext=[f"#{i} ({self.scores[i]:.1f})" for i in idx]),
                          height=120 + 32 * len(idx))
        return fig

    def to_html(self, k: int = 12) -> str:
        """The k best generations as HTML, each token's background red by its contrast (for notebooks)."""
        idx = self.top(k)
        lim = max((abs(c) for i in idx for c in self.token_scores[i]), default=1.0) or 1.0
        lines = []
        for i in idx:
            spans = []
            for t, c in zip(self.tokens[i], self.token_scores[i], strict=True):
                a = min(abs(c) / lim, 1.0)
                rgb = "214,39,40" if c > 0 else "31,119,180"
                spans.append(f'<span title="{c:+.2f}" style="background:rgba({rgb},{a:.2f});padding:1px 2px">'
                             f"{html.escape(t)}</span>")
            lines.append(f"<div><code>{self.scores[i]:+7.2f}</code> {' '.join(spans)}</div>")
        return "\n".join(lines)

@dataclass(frozen=True)
class IterativeCGEResult(CGEResult):
    """Iterative CGE: `scores` against the user's (unchanged) base model, as for static CGE;
    `live_scores` against the trained base copy at the moment each example was generated;
    `losses` the copy's causal-LM loss on each example before its step. `base_model` is the
    trained copy when asked for (`return_model=True`); it is not saved."""

    live_scores: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    base_model: Any = field(default=None, repr=False, compare=False)

    def to_frame(self, level: Literal["sequence", "token"] = "sequence") -> pd.DataFrame:
        df = super().to_frame(level)
        if level == "sequence":
            df["live_score"] = self.live_scores
            df["loss"] = self.losses
        return df

    def save(self, path):
        return Result.save(dataclasses.replace(self, base_model=None), path)


@dataclass(frozen=True)
class NoveltyScores(Result):
    """Sequence-level contrast log p_tuned(x) - log p_base(x) for given texts (BOS excluded)."""

    texts: list[str]
    scores: list[float]
    n_tokens: list[int]
    token_scores: list[list[float]]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(dict(text=self.texts, score=self.scores, n_tokens=self.n_tokens,
                                 score_per_token=[s / max(k, 1) for s, k in zip(self.scores, self.n_tokens,
                                                                                strict=True)]))

    def plot(self):
        import plotly.express as px

        df = self.to_frame().sort_values("score")
        return px.bar(df, x="score", y="text", orientation="h", title="novelty: log p_tuned - log p_base")


# --- public functions ------------------------------------------------------------------
def contrastive_generate(pair: ModelPair, *, n: int, max_new_tokens: int, alpha: float = 0.1, gamma: float = 1.0,
                         decoding: Decoding = "sample", num_beams: int = 4, seed: int = 0,
                         prompt: str | None = None, temperature: float = 1.0) -> CGEResult:
    """Generate `n` texts that show what the tuned model learned and the base did not.

    From BOS (or `prompt`), both models decode with KV caches; the next token maximises (beam)
    or is sampled from (sample) `log p_tuned - gamma * log p_base` over the tokens with
    `p_tuned >= alpha * max p_tuned`. With `decoding="beam"` the n best of `num_beams`
    hypotheses are returned (fewer if the plausibility constraint allows fewer paths).
    """
    cfg = CGEConfig(n=n, max_new_tokens=max_new_tokens, alpha=alpha, gamma=gamma, decoding=decoding,
                    num_beams=num_beams, seed=seed, prompt=prompt, temperature=temperature)
    _check_pair(pair)
    tuned, base = hf_twin(pair.tuned), hf_twin(pair.base)
    dec = _decode(tuned, base, pair, cfg, torch.Generator().manual_seed(cfg.seed))
    return _result(pair, dec, cfg)


def iterative_cge(pair: ModelPair, *, n: int, lr: float, steps_per_example: int = 1, return_model: bool = False,
                  max_new_tokens: int = 24, alpha: float = 0.1, gamma: float = 1.0, decoding: Decoding = "sample",
                  num_beams: int = 4, seed: int = 0, prompt: str | None = None, temperature: float = 1.0,
                  optimizer: Literal["adam", "sgd"] = "adam", progress: bool | None = None) -> IterativeCGEResult:
    """`n` examples one at a time; after each, `steps_per_example` causal-LM gradient steps on a
    *copy* of the base model with that example, so the base "learns" what was shown and the
    next example moves on to something not yet shown. The tuned model is frozen; the user's
    base model is never touched (the copy is discarded, or returned with `return_model=True`).
    """
    cfg = CGEConfig(n=1, max_new_tokens=max_new_tokens, alpha=alpha, gamma=gamma, decoding=decoding,
                    num_beams=num_beams, seed=seed, prompt=prompt, temperature=temperature)
    _pos_int("n", n)
    _pos_int("steps_per_example", steps_per_example)
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr: expected a number > 0, got {lr!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {optimizer!r}")
    _check_pair(pair)
    tuned, copy = hf_twin(pair.tuned), hf_twin(pair.base, copy=True)
    copy.requires_grad_(True)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(copy.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    prefix = prompt_ids(pair.tuned.tokenizer, prompt)
    eos = pair.tuned.tokenizer.eos_token_id
    ids, ended, live, losses = [], [], [], []
    bar = tqdm(range(n), desc="iterative CGE", disable=not progress if progress is not None else None, leave=False)
    for _ in bar:
        d = _decode(tuned, copy, pair, cfg, gen)
        ids.append(d.token_ids[0])
        ended.append(d.ended[0])
        live.append(float(sum(d.contrast[0])))
        seq = torch.tensor([prefix + d.token_ids[0] + ([eos] if d.ended[0] and eos is not None else [])])
        for k in range(steps_per_example):
            out = copy(input_ids=seq.to(pair.base.device), labels=seq.to(pair.base.device))
            if k == 0:
                losses.append(float(out.loss.detach()))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
    copy.requires_grad_(False)
    opt.zero_grad(set_to_none=True)
    texts = _texts(pair, ids)
    ref = _score_ids(pair, ids, prefix)
    res = _result(pair, Decoded(ids, ref, ended), cfg, method="iterative_cge")
    conf = {**res.config, "n": n, "lr": lr, "steps_per_example": steps_per_example, "optimizer": optimizer}
    return IterativeCGEResult(texts=texts, tokens=res.tokens, token_ids=ids, token_scores=ref,
                              scores=[float(sum(c)) for c in ref], ended=ended, config=conf,
                              method="iterative_cge", live_scores=live, losses=losses,
                              base_model=copy if return_model else None)


def novelty_scores(pair: ModelPair, texts: Sequence[str] | str, *, prompt: str | None = None,
                   batch_size: int = 32) -> NoveltyScores:
    """log p_tuned(x) - log p_base(x) of each text (after BOS, or after `prompt`), for ranking
    candidate data. Runs `subject.forward`, so active interventions and edits count."""
    if not isinstance(pair, ModelPair):
        raise ValueError(f"pair: expected a workbench.ModelPair(base, tuned), got {type(pair).__name__}")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts: expected a non-empty list of strings")
    _pos_int("batch_size", batch_size)
    prefix = prompt_ids(pair.tuned.tokenizer, prompt)
    tok = pair.tuned.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    per_tok = _score_ids(pair, ids, prefix, batch_size=batch_size)
    return NoveltyScores(texts=texts, scores=[float(sum(c)) for c in per_tok], n_tokens=[len(i) for i in ids],
                         token_scores=per_tok)


# --- helpers ---------------------------------------------------------------------------
def prompt_ids(tok, prompt: str | None) -> list[int]:
    """BOS (the tokenizer's own policy) followed by the prompt's tokens."""
    ids = tok(prompt or "", add_special_tokens=True)["input_ids"]
    if not ids:
        if tok.bos_token_id is None:
            raise ValueError("prompt: the tokenizer adds no BOS and the prompt is empty; pass a prompt")
        ids = [tok.bos_token_id]
    return list(ids)


def _banned(pair: ModelPair) -> tuple[int, ...]:
    # Special tokens other than EOS (padding, a second BOS, <unk>) and ids past the tokenizer (padded embedding rows) are never
    # content; banning them keeps texts and token ids in step.
    tok = pair.tuned.tokenizer
    eos = tok.eos_token_id
    extra = range(len(tok), pair.arch.d_vocab)
    return tuple(sorted({i for i in tok.all_special_ids if i != eos} | set(extra)))


def _decode(tuned, base, pair: ModelPair, cfg: CGEConfig, gen: torch.Generator) -> Decoded:
    prompt = torch.tensor([prompt_ids(pair.tuned.tokenizer, cfg.prompt)], device=pair.base.device)
    eos = pair.tuned.tokenizer.eos_token_id
    kw = dict(max_new_tokens=cfg.max_new_tokens, alpha=cfg.alpha, gamma=cfg.gamma, eos=eos, banned=_banned(pair))
    if cfg.decoding == "beam":
        return beam(tuned, base, prompt, n=cfg.n, num_beams=cfg.num_beams, **kw)
    return sample(tuned, base, prompt, n=cfg.n, temperature=cfg.temperature, generator=gen, **kw)


def _texts(pair: ModelPair, ids: list[list[int]]) -> list[str]:
    return [t.strip() for t in pair.tuned.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _result(pair: ModelPair, d: Decoded, cfg: CGEConfig, method: str = "cge") -> CGEResult:
    tok = pair.tuned.tokenizer
    return CGEResult(texts=_texts(pair, d.token_ids), tokens=[tok.convert_ids_to_tokens(i) for i in d.token_ids],
                     token_ids=d.token_ids, token_scores=d.contrast, scores=[float(sum(c)) for c in d.contrast],
                     ended=d.ended, config=dataclasses.asdict(cfg), method=method)


@torch.no_grad()
def _score_ids(pair: ModelPair, ids: list[list[int]], prefix: list[int], *,
               batch_size: int = 32) -> list[list[float]]:
    """Per-token log p_tuned - log p_base of each id list after `prefix`; full forwards, right padded."""
    out: list[list[float]] = []
    pad = pair.tuned.tokenizer.pad_token_id or 0
    for s in range(0, len(ids), batch_size):
        chunk = [prefix + i for i in ids[s: s + batch_size]]
        L = max(len(c) for c in chunk)
        x = torch.tensor([c + [pad] * (L - len(c)) for c in chunk], device=pair.base.device)
        m = torch.tensor([[1] * len(c) + [0] * (L - len(c)) for c in chunk], device=pair.base.device)
        lp = {}
        for nm, subj in (("t", pair.tuned), ("b", pair.base)):
            logits = subj.forward(x, m)
            lp[nm] = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
        diff = (lp["t"] - lp["b"]).cpu()
        P = len(prefix)
        for r, c in enumerate(chunk):
            out.append(diff[r, P - 1: len(c) - 1].tolist())
    return out
