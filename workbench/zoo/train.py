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


def _my_parts(seqs: list[Seq]) -> list[list[Seq]]:
    """Two length-sorted micro-batches; under torch.distributed each rank takes every world-th
    sequence, so all ranks together see exactly the single-process batch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        seqs = seqs[dist.get_rank() :: dist.get_world_size()]
    half = len(seqs) // 2
    return [p for p in (seqs[:half], seqs[half:]) if p]


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _all_reduce_grads(model: torch.nn.Module) -> None:
    """Sum gradients over ranks (each rank's loss is already divided by the global token count)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    ps = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    i = 0
    for p in ps:
        n = p.numel()
        p.grad = flat[i : i + n].view_as(p).clone()
        i += n


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
    stop_after: int | None = None,
    on_eval: Callable[[int, torch.nn.Module], None] | None = None,
    trainable: Callable[[str], bool] | None = None,
    grad_masks: dict[str, torch.Tensor] | None = None,
) -> TrainLog:
    """Train `model` in place with AdamW (linear warmup, cosine decay to 10 % over `steps`).

    `stop_after` ends training early on the same schedule (a recipe can stop before a phase
    transition and still be rebuilt exactly); `on_eval(step, model)` sees each curve point.
    `trainable(name)` picks the parameters that train (the rest stay bit-identical);
    `grad_masks[name]` (0/1, the parameter's shape) trains only part of a tensor, e.g. some experts
    of a fused expert tensor. Masked parameters get no weight decay, so their frozen part stays exact
    (Adam's update is exactly 0 where every gradient was 0).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    grad_masks = grad_masks or {}
    named = [(n, p) for n, p in model.named_parameters() if trainable is None or trainable(n) or n in grad_masks]
    keep = {n for n, _ in named}
    frozen = [(p, p.requires_grad) for n, p in model.named_parameters() if n not in keep]
    for p, _ in frozen:
        p.requires_grad_(False)
    handles = [p.register_hook(lambda g, m=grad_masks[n]: g * m) for n, p in named if n in grad_masks]
    groups = [{"params": [p for n, p in named if n not in grad_masks], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n in grad_masks], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98))
    try:
        return _loop(model, tokenizer, sampler, opt, rng, steps=steps, warmup=warmup, batch_size=batch_size,
                     eval_fn=eval_fn, eval_every=eval_every, progress=progress, stop_after=stop_after,
                     on_eval=on_eval, params=[p for _, p in named])
    finally:
        for h in handles:
            h.remove()
        for p, was in frozen:
            p.requires_grad_(was)


def _loop(model, tokenizer, sampler, opt, rng, *, steps, warmup, batch_size, eval_fn, eval_every, progress,
          stop_after, on_eval, params) -> TrainLog:

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
    for step in range(steps if stop_after is None else min(steps, stop_after)):
        model.train()
        seqs = [sampler(rng) for _ in range(batch_size)]
        # Length-sorted micro-batches cut padding; summing token losses / total tokens keeps
        # the step identical to one big batch.
        seqs.sort(key=lambda s: len(s[0]))
        n_tok = sum(sum(m) for _, m in seqs)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for part in _my_parts(seqs):
            ids, att, labels = collate(part, tokenizer)
            logits = model(input_ids=ids, attention_mask=att).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum",
            ) / n_tok
            loss.backward()
            loss_sum += loss.item()
        loss = torch.tensor(loss_sum)
        _all_reduce_grads(model)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
        last = step + 1 == (steps if stop_after is None else min(steps, stop_after))
        if eval_fn is not None and _is_main() and ((step + 1) % eval_every == 0 or last):
            model.eval()
            log.curves[step + 1] = {"loss": round(running, 4), **eval_fn(model)}
            if on_eval is not None:
                on_eval(step + 1, model)
            if bar is not None:
                bar.set_postfix(loss=f"{running:.3f}", **{k: v for k, v in log.curves[step + 1].items()
                                                         if isinstance(v, float) and k != "loss"})
    if bar is not None:
        bar.close()
    model.eval()
    log.seconds = time.time() - start
    log.steps = steps if stop_after is None else min(steps, stop_after)
    return log
