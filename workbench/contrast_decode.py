"""The decoding loops of contrastive generative exploration (CGE), on bare HF models.

Both models advance together, each with its own KV cache; at every step the next token is
chosen by the contrastive objective `log p_tuned - gamma * log p_base`, restricted to the
tokens the tuned model finds plausible (`p_tuned >= alpha * max p_tuned`, the adaptive
plausibility constraint of contrastive decoding). The *reported* per-token score is always
`log p_tuned - log p_base` of the chosen token, so per-sequence scores are comparable across
gamma and with `novelty_scores`.

These loops take bare `transformers` models (see `hf_twin`), not the engine's model: the
TransformerLens bridge adds hook points to every call, and with TL 4.3 + transformers 5.24
its attention did not fill an HF KV cache at all (it reads `past_key_values`, HF passes
`cache=`), so cached decoding through it silently ignored the context. A twin shares the
Subject's very Parameter objects, so weight edits are seen; activation interventions are
not (callers refuse those).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_BRIDGE_SEG = re.compile(r"(^|\.)_original_component(?=\.|$)")


def hf_twin(subject, *, copy: bool = False) -> nn.Module:
    """A bare HF model of `subject`'s architecture holding its weights.

    `copy=False` shares the Subject's Parameter objects (no memory, edits visible);
    `copy=True` holds detached clones (a deep copy to train without touching the user's model).
    The twin is built on the meta device and then given real tensors, so nothing of model
    size is allocated twice beyond the clones asked for.
    """
    from transformers import AutoModelForCausalLM

    hf = subject.hf_model
    cfg = hf.config
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(cfg, attn_implementation=cfg._attn_implementation,
                                                dtype=next(hf.parameters()).dtype)
    params = dict(subject.params.items())
    for name, _ in list(twin.named_parameters()):
        if name not in params:
            continue  # a tied weight: named_parameters() already dedups it, tie_weights() re-links it
        src = params[name]
        new = nn.Parameter(src.detach().clone(), requires_grad=True) if copy else src
        mod_name, _, leaf = name.rpartition(".")
        twin.get_submodule(mod_name)._parameters[leaf] = new
    if getattr(cfg, "tie_word_embeddings", False):
        twin.tie_weights()
    # Buffers (rotary inv_freq, ...) under their HF names; the bridge nests modules as
    # `_original_component`, which we strip.
    bufs = {_BRIDGE_SEG.sub("", n): b for n, b in hf.named_buffers()}
    for name, _ in list(twin.named_buffers()):
        if name not in bufs:
            raise ValueError(f"hf_twin: {subject.name}: buffer {name!r} not found in the loaded model")
        mod_name, _, leaf = name.rpartition(".")
        mod = twin.get_submodule(mod_name)
        mod._buffers[leaf] = bufs[name].clone() if copy else bufs[name]
    left = [n for n, t in list(twin.named_parameters()) + list(twin.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"hf_twin: {subject.name}: no weights found for {left[:4]}")
    twin.generation_config = hf.generation_config
    return twin.eval()


@dataclass(frozen=True)
class Decoded:
    """Raw output of a decoding loop: per sequence, new token ids and per-token contrast."""

    token_ids: list[list[int]]  # new tokens, EOS excluded
    contrast: list[list[float]]  # log p_tuned - log p_base of each new token
    ended: list[bool]  # stopped at EOS (else at max_new_tokens)


def step_scores(logits_t: Tensor, logits_b: Tensor, *, alpha: float, gamma: float,
                banned: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """(objective, contrast), both `batch vocab`; objective is -inf outside the plausible set."""
    lpt = torch.log_softmax(logits_t.float(), -1)
    lpb = torch.log_softmax(logits_b.float(), -1)
    sel = lpt
    if banned:
        sel = lpt.clone()
        sel[:, list(banned)] = -math.inf
    keep = sel >= sel.max(-1, keepdim=True).values + math.log(alpha)
    contrast = lpt - lpb
    objective = (lpt - gamma * lpb).masked_fill(~keep, -math.inf)
    return objective, contrast


def _logits(model, ids: Tensor, cache):
    out = model(input_ids=ids, cache=cache, use_cache=True)
    return out.logits[:, -1], out.past_key_values


@torch.no_grad()
def sample(tuned, base, prefix: Tensor, *, n: int, max_new_tokens: int, alpha: float, gamma: float,
           temperature: float, eos: int | None, banned: tuple[int, ...], generator: torch.Generator) -> Decoded:
    """`n` samples from softmax(objective / temperature), batched, both models KV-cached."""
    ids = prefix.expand(n, -1).contiguous()
    lt, ct = _logits(tuned, ids, None)
    lb, cb = _logits(base, ids, None)
    toks = torch.zeros(n, 0, dtype=torch.long)
    cons = torch.zeros(n, 0)
    done = torch.zeros(n, dtype=torch.bool)
    length = torch.full((n,), max_new_tokens)
    for step in range(max_new_tokens):
        obj, con = step_scores(lt, lb, alpha=alpha, gamma=gamma, banned=banned)
        probs = torch.softmax(obj / temperature, -1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)[:, 0]
        toks = torch.cat([toks, nxt[:, None].cpu()], 1)
        cons = torch.cat([cons, con.gather(1, nxt[:, None]).cpu()], 1)
        if eos is not None:
            newly = (nxt.cpu() == eos) & ~done
            length[newly] = step
            done |= newly
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        lt, ct = _logits(tuned, nxt[:, None], ct)
        lb, cb = _logits(base, nxt[:, None], cb)
    return Decoded([toks[i, : length[i]].tolist() for i in range(n)],
                   [cons[i, : length[i]].tolist() for i in range(n)], done.tolist())


@torch.no_grad()
def beam(tuned, base, prefix: Tensor, *, n: int, num_beams: int, max_new_tokens: int, alpha: float,
         gamma: float, eos: int | None, banned: tuple[int, ...]) -> Decoded:
    """Beam search on the summed objective; the `n` best hypotheses (finished or cut at length).

    A hypothesis's score excludes its EOS token, the same as the reported sequence score.
    Returns fewer than `n` when the plausibility constraint leaves fewer distinct paths.
    """
    B = num_beams
    ids = prefix.expand(B, -1).contiguous()
    lt, ct = _logits(tuned, ids, None)
    lb, cb = _logits(base, ids, None)
    score = torch.full((B,), -math.inf)
    score[0] = 0.0  # one live beam at the start: the others would be duplicates
    toks = torch.zeros(B, 0, dtype=torch.long)
    cons = torch.zeros(B, 0)
    finished: list[tuple[float, list[int], list[float], bool]] = []
    grown = False  # whether the live beams hold hypotheses cut at max_new_tokens
    for step in range(max_new_tokens):
        obj, con = step_scores(lt, lb, alpha=alpha, gamma=gamma, banned=banned)
        obj, con = obj.cpu(), con.cpu()
        V = obj.shape[-1]
        cand = score[:, None] + obj
        if eos is not None:  # ending adds nothing to the score; it only has to be plausible
            cand[:, eos] = torch.where(torch.isfinite(obj[:, eos]), score, -math.inf)
        top_s, top_i = cand.flatten().topk(min(2 * B, cand.numel()))
        nxt: list[tuple[int, int, float]] = []
        for s, i in zip(top_s.tolist(), top_i.tolist(), strict=True):
            if s == -math.inf or len(nxt) == B:
                break
            b, t = divmod(i, V)
            if t == eos:
                finished.append((s, toks[b].tolist(), cons[b].tolist(), True))
            else:
                nxt.append((b, t, s))
        if not nxt or len(finished) >= B:
            break  # nothing left to grow, or enough finished hypotheses (HF's early_stopping=True)
        while len(nxt) < B:  # fewer plausible paths than beams: pad with dead copies
            nxt.append((nxt[0][0], nxt[0][1], -math.inf))
        src = torch.tensor([b for b, _, _ in nxt])
        new = torch.tensor([t for _, t, _ in nxt])
        score = torch.tensor([s for _, _, s in nxt])
        toks = torch.cat([toks[src], new[:, None]], 1)
        cons = torch.cat([cons[src], con[src, new][:, None]], 1)
        if step == max_new_tokens - 1:
            grown = True
            break
        ct.reorder_cache(src.to(ids.device))
        cb.reorder_cache(src.to(ids.device))
        lt, ct = _logits(tuned, new[:, None].to(ids.device), ct)
        lb, cb = _logits(base, new[:, None].to(ids.device), cb)
    live = [(s, toks[b].tolist(), cons[b].tolist(), False)
            for b, s in enumerate(score.tolist()) if s > -math.inf] if grown else []
    hyps = sorted(finished + live, key=lambda h: -h[0])
    out = hyps[:n]
    return Decoded([h[1] for h in out], [h[2] for h in out], [h[3] for h in out])
