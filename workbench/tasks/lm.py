"""A minimal `lm` (tokenizer + forward) around a bare HF model, and batched greedy generation.

Metrics in `evaluate.py` only need `.tokenizer` and `.forward(input_ids, attention_mask)`,
so a Subject (with interventions active) and an `HFLM` are measured by the same code.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LM(Protocol):
    tokenizer: object

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class HFLM:
    """Wrap an HF causal LM; position ids come from the mask so left padding is exact."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.logits


def encode(lm: LM, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask (position -1 is every row's last real token)."""
    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    return enc["input_ids"], enc["attention_mask"]


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def last_logits(lm: LM, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Next-token logits after each prompt, [n, vocab]."""
    outs = []
    for chunk in batches(list(prompts), batch_size):
        ids, mask = encode(lm, chunk)
        outs.append(lm.forward(ids, mask)[:, -1, :].float())
    return torch.cat(outs)


@torch.no_grad()
def greedy_generate(lm: LM, prompts: list[str], max_new_tokens: int = 20, batch_size: int = 256,
                    stop_at_eos: bool = True) -> list[str]:
    """Greedy continuation of each prompt; returns the new text only (no cache: models are tiny)."""
    tok = lm.tokenizer
    eos = tok.eos_token_id
    results: list[str] = []
    for chunk in batches(list(prompts), batch_size):
        ids, mask = encode(lm, chunk)
        new = []
        done = torch.zeros(len(chunk), dtype=torch.bool)
        for _ in range(max_new_tokens):
            nxt = lm.forward(ids, mask)[:, -1, :].argmax(-1)
            if stop_at_eos and eos is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                done |= nxt == eos
            new.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
            if stop_at_eos and bool(done.all()):
                break
        gen = torch.stack(new, 1) if new else torch.empty(len(chunk), 0, dtype=torch.long)
        for row in gen.tolist():
            if stop_at_eos and eos in row:
                row = row[: row.index(eos)]
            results.append(tok.decode(row, skip_special_tokens=True))
    return results


@torch.no_grad()
def token_logprobs(lm: LM, texts: list[str], batch_size: int = 256) -> list[torch.Tensor]:
    """Per-token log p of each text's tokens after `<bos>` (one 1-D tensor per text)."""
    out: list[torch.Tensor] = []
    for chunk in batches(list(texts), batch_size):
        ids, mask = encode(lm, chunk)
        logp = lm.forward(ids, mask).float().log_softmax(-1)
        lp = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        valid = mask[:, :-1].bool() & mask[:, 1:].bool()  # predicted token and its context are real
        for r in range(len(chunk)):
            out.append(lp[r][valid[r]])
    return out
