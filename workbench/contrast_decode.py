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

import functools
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


def _ban_bias(vocab: int, banned: tuple[int, ...], device) -> Tensor | None:
    """`vocab` additive bias: -inf at the banned tokens (built once per decode, not per step)."""
    if not banned:
        return None
    bias = torch.zeros(vocab, device=device)
    bias[list(banned)] = -math.inf
    return bias


def step_scores(logits_t: Tensor, logits_b: Tensor, *, alpha: float, gamma: float,
                banned: tuple[int, ...] = (), bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(objective, contrast), both `batch vocab`; objective is -inf outside the plausible set.

    `bias` is `_ban_bias(vocab, banned)` precomputed (decoding loops); else `banned` is used.
    """
    lpt = torch.log_softmax(logits_t.float(), -1)
    lpb = torch.log_softmax(logits_b.float(), -1)
    if bias is None and banned:
        bias = _ban_bias(lpt.shape[-1], banned, lpt.device)
    sel = lpt if bias is None else lpt + bias
    keep = sel >= sel.max(-1, keepdim=True).values + math.log(alpha)
    contrast = lpt - lpb
    objective = (lpt - gamma * lpb).masked_fill(~keep, -math.inf)
    return objective, contrast


def _logits(model, ids: Tensor, cache):
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values


@functools.cache
def _prealloc_layer():
    """An HF cache layer that writes into a buffer preallocated on its first update."""
    from transformers.cache_utils import DynamicLayer

    class PreallocLayer(DynamicLayer):
        def __init__(self, length: int):
            super().__init__()
            self.length, self.grown, self._n = length, False, 0
            self._k = self._v = torch.empty(0)

        def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k = key_states.new_empty(*key_states.shape[:2], self.length, key_states.shape[-1])
            self._v = value_states.new_empty(*value_states.shape[:2], self.length, value_states.shape[-1])

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            m = self._n + key_states.shape[-2]
            if self.grown or m > self.length:  # longer than planned: grow as the stock layer does
                self.grown = True
                return super().update(key_states, value_states, *args, **kwargs)
            self._k[:, :, self._n:m] = key_states
            self._v[:, :, self._n:m] = value_states
            self._n = m
            self.keys, self.values = self._k[:, :, :m], self._v[:, :, :m]
            return self.keys, self.values

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            if self.grown or not self._n:
                super().reorder_cache(beam_idx)
                return
            self._k, self._v = self._k.index_select(0, beam_idx), self._v.index_select(0, beam_idx)
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]

    return DynamicLayer, PreallocLayer


def _cache(model, length: int):
    """An HF `DynamicCache` whose full-attention layers write into buffers preallocated for
    `length` positions, attention reading the filled part as a view. The stock layers grow by
    `torch.cat`, re-copying every layer's keys and values at every step (a third of a decode
    step's time on the small organisms). Same values, same shapes: the same numbers."""
    from transformers import DynamicCache

    dynamic, prealloc = _prealloc_layer()
    cache = DynamicCache(config=model.config)
    cache.layers = [prealloc(length) if type(layer) is dynamic else layer for layer in cache.layers]
    return cache


@torch.inference_mode()
def sample(tuned, base, prefix: Tensor, *, n: int, max_new_tokens: int, alpha: float, gamma: float,
           temperature: float, eos: int | None, banned: tuple[int, ...], generator: torch.Generator) -> Decoded:
    """`n` samples from softmax(objective / temperature), batched, both models KV-cached."""
    ids = prefix.expand(n, -1).contiguous()
    total = ids.shape[1] + max_new_tokens
    lt, ct = _logits(tuned, ids, _cache(tuned, total))
    lb, cb = _logits(base, ids, _cache(base, total))
    toks = torch.zeros(n, max_new_tokens, dtype=torch.long)  # preallocated, filled column by column
    cons = torch.zeros(n, max_new_tokens)
    done = torch.zeros(n, dtype=torch.bool)
    length = torch.full((n,), max_new_tokens)
    bias = _ban_bias(lt.shape[-1], banned, lt.device)
    steps = max_new_tokens
    for step in range(max_new_tokens):
        obj, con = step_scores(lt, lb, alpha=alpha, gamma=gamma, bias=bias)
        probs = torch.softmax(obj / temperature, -1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)
        toks[:, step] = nxt[:, 0].cpu()
        cons[:, step] = con.gather(1, nxt)[:, 0].cpu()
        if eos is not None:
            newly = (toks[:, step] == eos) & ~done
            length[newly] = step
            done |= newly
            if bool(done.all()):
                steps = step + 1
                break
        if step == max_new_tokens - 1:
            break
        lt, ct = _logits(tuned, nxt, ct)
        lb, cb = _logits(base, nxt, cb)
    toks, cons = toks[:, :steps], cons[:, :steps]
    return Decoded([toks[i, : length[i]].tolist() for i in range(n)],
                   [cons[i, : length[i]].tolist() for i in range(n)], done.tolist())


@torch.inference_mode()
def beam(tuned, base, prefix: Tensor, *, n: int, num_beams: int, max_new_tokens: int, alpha: float,
         gamma: float, eos: int | None, banned: tuple[int, ...]) -> Decoded:
    """Beam search on the summed objective; the `n` best hypotheses (finished or cut at length).

    A hypothesis's score excludes its EOS token, the same as the reported sequence score.
    Returns fewer than `n` when the plausibility constraint leaves fewer distinct paths.
    """
    B = num_beams
    ids = prefix.expand(B, -1).contiguous()
    total = ids.shape[1] + max_new_tokens
    lt, ct = _logits(tuned, ids, _cache(tuned, total))
    lb, cb = _logits(base, ids, _cache(base, total))
    score = torch.full((B,), -math.inf)
    score[0] = 0.0  # one live beam at the start: the others would be duplicates
    toks = torch.zeros(B, 0, dtype=torch.long)
    cons = torch.zeros(B, 0)
    finished: list[tuple[float, list[int], list[float], bool]] = []
    bias = _ban_bias(lt.shape[-1], banned, lt.device)
    grown = False  # whether the live beams hold hypotheses cut at max_new_tokens
    for step in range(max_new_tokens):
        obj, con = step_scores(lt, lb, alpha=alpha, gamma=gamma, bias=bias)
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
