"""The training loop shared by every organism: deterministic for a seed, on CPU.

Loss is next-token cross-entropy on the positions a sequence's mask selects, so
answer-only tasks (recall, binding, intent) and full-text tasks (facts, novel text) mix.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workbench.zoo.mixture import Sampler, Seq


@dataclass
class TrainLog:
    """Learning curves: `curves[step] = {metric: value}`, plus loss and wall time."""

    curves: dict[int, dict] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0


def collate(seqs: list[Seq], tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 where no loss), with `<bos>` first."""
    vocab = tokenizer.get_vocab()
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    width = 1 + max(len(w) for w, _ in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for r, (words, mask) in enumerate(seqs):
        row = [bos] + [vocab[w] for w in words]
        ids[r, : len(row)] = torch.tensor(row)
        att[r, : len(row)] = 1
        for i, m in enumerate(mask):
            if m:
                labels[r, i + 1] = row[i + 1]
    return ids, att, labels


def train(
    model: torch.nn.Module,
    tokenizer,
    sampler: Sampler,
    *,
    steps: int,
    seed: int,
    lr: float = 1e-3,
    batch_size: int = 48,
    warmup: int = 100,
    weight_decay: float = 0.01,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    eval_every: int = 250,
    progress: str | None = None,
) -> TrainLog:
    """Train `model` in place with AdamW (linear warmup, cosine decay to 10 %)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(t * torch.pi)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    log = TrainLog()
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=progress, leave=False)
    start = time.time()
    running = None
    for step in range(steps):
        model.train()
        seqs = [sampler(rng) for _ in range(batch_size)]
        # Length-sorted micro-batches cut padding; summing token losses / total tokens keeps
        # the step identical to one big batch.
        seqs.sort(key=lambda s: len(s[0]))
        n_tok = sum(sum(m) for _, m in seqs)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for part in (seqs[: batch_size // 2], seqs[batch_size // 2 :]):
            if not part:
                continue
            ids, att, labels = collate(part, tokenizer)
            logits = model(input_ids=ids, attention_mask=att).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum",
            ) / n_tok
            loss.backward()
            loss_sum += loss.item()
        loss = torch.tensor(loss_sum)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
        if eval_fn is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            model.eval()
            log.curves[step + 1] = {"loss": round(running, 4), **eval_fn(model)}
            if bar is not None:
                bar.set_postfix(loss=f"{running:.3f}", **{k: v for k, v in log.curves[step + 1].items()
                                                         if isinstance(v, float) and k != "loss"})
    if bar is not None:
        bar.close()
    model.eval()
    log.seconds = time.time() - start
    log.steps = steps
    return log
