"""Intent pairs of the context-vs-prior task and their metrics (Minder, Du et al. 2025).

    pairs = intent_pairs(200, seed=0, split="eval")     # held-out (context, query) items
    m = pair_metrics(subject, pairs)                    # PairAcc, per-intent acc, memorisation ratio
    m = pair_metrics(subject, pairs, steer=(iv_ctx, iv_prior))   # intent removed, knob set instead

One item is one (context, query) with three prompts that differ only in the intent slot:
"... intent : context . question : paris", "... intent : prior . ...", and the bare prompt
without the instruction. The two intent prompts have the same token length (the intent word is
one token), which is what patching at "the last position" between them needs.

Memorisation ratio (Longpre et al. 2021, "Entity-based knowledge conflicts"): among the rows that
ask for the *context* answer, MR = p_o / (p_o + p_s), p_o the share answered with the memorised
(prior) answer, p_s the share answered from context. 0 = the context always wins, 1 = memory
always wins; rows answered with neither are left out of both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from workbench.interventions import Intervention
from workbench.results import Result
from workbench.tasks import Example, context_vs_prior
from workbench.tasks.knowledge import cvp_prompt

INTENTS = ("context", "prior")


@dataclass(frozen=True)
class IntentPairs:
    """(context, query) items, each with both intent prompts, the bare prompt and both answers."""

    prompt_ctx: tuple[str, ...]
    prompt_prior: tuple[str, ...]
    prompt_bare: tuple[str, ...]
    answer_ctx: tuple[str, ...]
    answer_prior: tuple[str, ...]

    def __post_init__(self) -> None:
        n = {len(getattr(self, f)) for f in ("prompt_ctx", "prompt_prior", "prompt_bare", "answer_ctx", "answer_prior")}
        if len(n) != 1:
            raise ValueError(f"IntentPairs: fields have different lengths {sorted(n)}; expected one entry per item")
        if not self.prompt_ctx:
            raise ValueError("IntentPairs: expected at least one item, got none")
        same = [i for i, (a, b) in enumerate(zip(self.answer_ctx, self.answer_prior, strict=True)) if a == b]
        if same:
            raise ValueError(f"IntentPairs: items {same[:5]} have the same context and prior answer; the two "
                             "intents must disagree")

    def __len__(self) -> int:
        return len(self.prompt_ctx)

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> IntentPairs:
        """Group `context_vs_prior(..., intent="both")` rows by pair_id; both intents must be there."""
        groups: dict[int, dict[str, Example]] = {}
        for e in examples:
            m = e.meta
            if not {"pair_id", "intent", "pairs", "query"} <= set(m):
                raise ValueError("examples: expected context_vs_prior examples (meta with pair_id, intent, pairs, "
                                 f"query), got meta keys {sorted(m)}")
            groups.setdefault(m["pair_id"], {})[m["intent"]] = e
        missing = {pid: sorted(set(INTENTS) - set(g)) for pid, g in groups.items() if set(g) != set(INTENTS)}
        if missing:
            pid, lack = next(iter(missing.items()))
            raise ValueError(f"examples: {len(missing)} pair(s) lack an intent (pair_id {pid} has no {lack} row); "
                             "every (context, query) needs both a 'context' and a 'prior' row "
                             "(build them with context_vs_prior(..., intent='both'))")
        rows = [groups[k] for k in sorted(groups)]
        return cls(
            prompt_ctx=tuple(g["context"].prompt for g in rows),
            prompt_prior=tuple(g["prior"].prompt for g in rows),
            prompt_bare=tuple(cvp_prompt(g["context"].meta["pairs"], g["context"].meta["query"], None) for g in rows),
            answer_ctx=tuple(g["context"].target for g in rows),
            answer_prior=tuple(g["prior"].target for g in rows),
        )

    def subset(self, idx: Sequence[int]) -> IntentPairs:
        idx = list(idx)
        return IntentPairs(*(tuple(getattr(self, f)[i] for i in idx) for f in
                             ("prompt_ctx", "prompt_prior", "prompt_bare", "answer_ctx", "answer_prior")))

    def split(self, fractions: Sequence[float], *, seed: int = 0) -> list[IntentPairs]:
        """Disjoint random parts in the given proportions (each part non-empty)."""
        if not fractions or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"fractions: expected positive shares summing to 1, got {list(fractions)}")
        if len(self) < len(fractions):
            raise ValueError(f"pairs: {len(self)} items cannot be split into {len(fractions)} non-empty parts")
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        cuts = np.round(np.cumsum(fractions) * len(self)).astype(int).tolist()
        cuts = [min(max(c, i + 1), len(self) - (len(fractions) - 1 - i)) for i, c in enumerate(cuts)]
        out, start = [], 0
        for c in cuts:
            out.append(self.subset(order[start:c]))
            start = c
        return out

    def answer_ids(self, tokenizer) -> tuple[Tensor, Tensor]:
        """First-token ids of the context and prior answers (`batch`)."""
        def ids(words):
            out = tokenizer.convert_tokens_to_ids([w.split()[0] for w in words])
            unk = tokenizer.unk_token_id
            if unk is not None and unk in out:
                bad = words[out.index(unk)]
                raise ValueError(f"pairs: answer {bad!r} is not a word of this subject's tokenizer")
            return torch.tensor(out)

        return ids(self.answer_ctx), ids(self.answer_prior)

    def check_lengths(self, subject) -> None:
        """Source and target of a patch must have equal token length (only the intent word differs)."""
        tok = subject.tokenizer
        lc = [len(x) for x in tok(list(self.prompt_ctx))["input_ids"]]
        lp = [len(x) for x in tok(list(self.prompt_prior))["input_ids"]]
        bad = [i for i, (a, b) in enumerate(zip(lc, lp, strict=True)) if a != b]
        if bad:
            i = bad[0]
            raise ValueError(f"pairs: {len(bad)} item(s) have context/prior prompts of different token length "
                             f"(item {i}: {lc[i]} vs {lp[i]} tokens); patching at the last position needs equal "
                             "lengths: the intent word must be a single token")


def intent_pairs(n: int, *, seed: int = 0, split: str = "eval", n_distractors: tuple[int, int] = (1, 3)) -> IntentPairs:
    """`n` (context, query) items of the world's context-vs-prior task, both intents each."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    return IntentPairs.from_examples(context_vs_prior(2 * n, seed=seed, split=split, intent="both",
                                                      n_distractors=n_distractors))


# --- metrics -----------------------------------------------------------------------------------
@torch.no_grad()
def last_token_argmax(subject, prompts: Sequence[str], ivs: Sequence[Intervention] = (), *,
                      batch_size: int = 128) -> Tensor:
    """Greedy next token after each prompt, with `ivs` active (`batch`)."""
    out = []
    with subject.intervene(*ivs):
        for i in range(0, len(prompts), batch_size):
            out.append(subject.forward(subject.tokenize(list(prompts[i:i + batch_size])))[:, -1].argmax(-1))
    return torch.cat(out).cpu()


@dataclass(frozen=True)
class PairMetrics(Result):
    """PairAcc and friends of one subject on one set of intent pairs under one condition."""

    subject: str
    condition: str
    n_pairs: int
    pair_acc: float
    context_acc: float
    prior_acc: float
    memorisation_ratio: float
    correct_ctx: np.ndarray
    correct_prior: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{k: getattr(self, k) for k in ("subject", "condition", "n_pairs", "pair_acc",
                                                            "context_acc", "prior_acc", "memorisation_ratio")}])

    def plot(self):
        import plotly.graph_objects as go

        keys = ["pair_acc", "context_acc", "prior_acc", "memorisation_ratio"]
        return go.Figure(go.Bar(x=keys, y=[getattr(self, k) for k in keys]),
                         layout=dict(title=f"{self.subject}: {self.condition}", yaxis_range=[0, 1]))


def _metrics(name: str, condition: str, pred_ctx: Tensor, pred_prior: Tensor, ids_ctx: Tensor,
             ids_prior: Tensor) -> PairMetrics:
    ok_c = (pred_ctx == ids_ctx).numpy()
    ok_p = (pred_prior == ids_prior).numpy()
    p_o = float((pred_ctx == ids_prior).float().mean())
    p_s = float(ok_c.mean())
    mr = p_o / (p_o + p_s) if p_o + p_s > 0 else float("nan")
    return PairMetrics(subject=name, condition=condition, n_pairs=len(ok_c), pair_acc=float((ok_c & ok_p).mean()),
                       context_acc=float(ok_c.mean()), prior_acc=float(ok_p.mean()), memorisation_ratio=mr,
                       correct_ctx=ok_c, correct_prior=ok_p)


def pair_metrics(subject, pairs: IntentPairs, *, steer: tuple[Sequence[Intervention], Sequence[Intervention]] | None = None,
                 condition: str | None = None, batch_size: int = 128) -> PairMetrics:
    """Score `subject` on `pairs`.

    Without `steer`: the prompts *with* the intent instruction. With `steer=(ivs_ctx, ivs_prior)`:
    the bare prompts (instruction removed), once under `ivs_ctx` (scored against the context
    answer) and once under `ivs_prior` (scored against the prior answer).
    """
    if not isinstance(pairs, IntentPairs):
        raise ValueError(f"pairs: expected IntentPairs (see intent_pairs), got {type(pairs).__name__}")
    ids_c, ids_p = pairs.answer_ids(subject.tokenizer)
    if steer is None:
        pc = last_token_argmax(subject, pairs.prompt_ctx, batch_size=batch_size)
        pp = last_token_argmax(subject, pairs.prompt_prior, batch_size=batch_size)
        cond = condition or "with intent"
    else:
        if len(steer) != 2:
            raise ValueError("steer: expected (interventions for context, interventions for prior)")
        pc = last_token_argmax(subject, pairs.prompt_bare, list(steer[0]), batch_size=batch_size)
        pp = last_token_argmax(subject, pairs.prompt_bare, list(steer[1]), batch_size=batch_size)
        cond = condition or "steered, no intent"
    return _metrics(subject.name, cond, pc, pp, ids_c, ids_p)


def bare_metrics(subject, pairs: IntentPairs, *, batch_size: int = 128) -> PairMetrics:
    """The bare prompts unsteered: both rows get one answer, so PairAcc is 0 by construction."""
    pred = last_token_argmax(subject, pairs.prompt_bare, batch_size=batch_size)
    ids_c, ids_p = pairs.answer_ids(subject.tokenizer)
    return _metrics(subject.name, "no intent", pred, pred, ids_c, ids_p)


def confident(subject, pairs: IntentPairs, *, batch_size: int = 128) -> IntentPairs:
    """The items `subject` answers right under both intents (what DAS and the search train on)."""
    m = pair_metrics(subject, pairs, batch_size=batch_size)
    keep = np.flatnonzero(m.correct_ctx & m.correct_prior)
    if len(keep) == 0:
        raise ValueError(f"pairs: {subject.name!r} answers none of the {len(pairs)} items right under both intents "
                         "(PairAcc 0); pass keep='all' to use every item")
    return pairs.subset(keep.tolist())
