"""Task metrics. Each takes any `lm` with `.tokenizer` and `.forward(input_ids, attention_mask)`."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from workbench.tasks.example import Example
from workbench.tasks.judges import is_refusal, is_toxic
from workbench.tasks.lm import LM, greedy_generate, last_logits, token_logprobs


def _first_token_ids(lm: LM, words: list[str]) -> torch.Tensor:
    ids = lm.tokenizer.convert_tokens_to_ids([w.split()[0] for w in words])
    return torch.tensor(ids)


def next_token_correct(lm: LM, examples: list[Example]) -> torch.Tensor:
    """Bool per example: is the argmax next token the target's first word?"""
    if not examples:
        raise ValueError("examples must be non-empty")
    pred = last_logits(lm, [e.prompt for e in examples]).argmax(-1)
    return pred == _first_token_ids(lm, [e.target for e in examples])


def fact_recall(lm: LM, examples: list[Example]) -> float:
    """Share of facts whose object is the greedy next token."""
    return float(next_token_correct(lm, examples).float().mean())


def entity_accuracy(lm: LM, examples: list[Example]) -> dict:
    """Overall accuracy, accuracy per number of objects, and chance (mean of 1/n_objects)."""
    ok = next_token_correct(lm, examples).tolist()
    per: dict[int, list[bool]] = defaultdict(list)
    for e, c in zip(examples, ok, strict=False):
        per[int(e.meta["n_objects"])].append(c)
    return {
        "accuracy": sum(ok) / len(ok),
        "per_n_objects": {k: sum(v) / len(v) for k, v in sorted(per.items())},
        "chance": sum(1.0 / e.meta["n_objects"] for e in examples) / len(examples),
    }


def pair_acc(lm: LM, examples: list[Example]) -> dict:
    """PairAcc (both intents right for the same context and query), plus per-intent accuracy."""
    ok = next_token_correct(lm, examples).tolist()
    by_intent: dict[str, list[bool]] = defaultdict(list)
    pairs: dict[int, list[bool]] = defaultdict(list)
    for e, c in zip(examples, ok, strict=False):
        by_intent[e.meta["intent"]].append(c)
        pairs[e.meta["pair_id"]].append(c)
    full = [all(v) for v in pairs.values() if len(v) == 2]
    acc = {k: sum(v) / len(v) for k, v in by_intent.items()}
    return {"pair_acc": sum(full) / len(full) if full else float("nan"),
            "context_acc": acc.get("context", float("nan")), "prior_acc": acc.get("prior", float("nan"))}


def toxic_rate(lm: LM, prompts: list[str], max_new_tokens: int = 20) -> float:
    """Share of greedy continuations the lexicon judge calls toxic."""
    return sum(map(is_toxic, greedy_generate(lm, prompts, max_new_tokens))) / len(prompts)


def refusal_rate(lm: LM, prompts: list[str], max_new_tokens: int = 6) -> float:
    """Share of greedy responses that start with the refusal phrase."""
    return sum(map(is_refusal, greedy_generate(lm, prompts, max_new_tokens))) / len(prompts)


def benign_accuracy(lm: LM, examples: list[Example]) -> float:
    """Share of requests whose greedy response starts with the target (a refusal is wrong)."""
    n_new = max(len(e.target.split()) for e in examples)
    outs = greedy_generate(lm, [e.prompt for e in examples], n_new)
    return sum(o.split()[: len(e.target.split())] == e.target.split() for o, e in zip(outs, examples, strict=False)) / len(examples)


def novel_logprob_ratio(lm_tuned: LM, lm_base: LM, texts: list[str]) -> dict:
    """How much likelier texts are under the tuned model, per token.

    ratio = exp(mean over all tokens of log p_tuned - log p_base): the geometric-mean
    per-token likelihood ratio (>= 10 means 10x likelier per token).
    """
    lt = torch.cat(token_logprobs(lm_tuned, texts))
    lb = torch.cat(token_logprobs(lm_base, texts))
    diff = float((lt - lb).mean())
    return {"ratio": math.exp(diff), "mean_logprob_tuned": float(lt.mean()),
            "mean_logprob_base": float(lb.mean()), "n_tokens": int(lt.numel())}


def expert_usage(model, lm: LM, texts: list[str]) -> dict:
    """Share of top-k routing slots each expert receives, per MoE layer (HF Mixtral-style models).

    Returns shares [layers][experts], the max/min share ratio and the normalised entropy
    (1.0 = perfectly uniform).
    """
    from workbench.tasks.lm import encode

    k = model.config.num_experts_per_tok
    n_exp = model.config.num_local_experts
    counts = None
    with torch.no_grad():
        ids, mask = encode(lm, texts)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_router_logits=True)
        for _layer, logits in enumerate(out.router_logits):
            top = logits.view(-1, n_exp).topk(k, -1).indices[mask.view(-1).bool()]
            c = torch.bincount(top.view(-1), minlength=n_exp).float()
            counts = c[None] if counts is None else torch.cat([counts, c[None]])
    shares = counts / counts.sum(-1, keepdim=True)
    ent = -(shares * shares.clamp_min(1e-12).log()).sum(-1) / math.log(n_exp)
    return {"shares": shares.tolist(), "max_min_ratio": float(shares.max() / shares.min().clamp_min(1e-9)),
            "entropy": float(ent.mean())}
