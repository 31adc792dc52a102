"""Tiny random demo pairs, so the explorer works before (or without) the shipped organisms.

Built with the organisms' own tokenizer and architecture code (`workbench.zoo.arch`), so every
task prompt set is in-vocabulary; the "tuned" model is the base plus a planted, structured delta
(a low-rank change to one MLP and a few large entries in one attention matrix), so the diff
views have something to find. The numbers mean nothing about fine-tuning: use a zoo pair for that.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

DEMOS = {"demo": "llama", "demo-moe": "mixtral"}


def demo_root() -> Path:
    return Path(os.environ.get("WORKBENCH_DEMO_DIR", Path(tempfile.gettempdir()) / "workbench-explorer-demo"))


def _plant(model, seed: int) -> None:
    """Low-rank delta on the last layer's MLP output, a few big entries in layer 0's value matrix."""
    g = torch.Generator().manual_seed(seed)
    sd = dict(model.named_parameters())
    last = model.config.num_hidden_layers - 1
    name = next(n for n in (f"model.layers.{last}.mlp.down_proj.weight", f"model.layers.{last}.mlp.experts.down_proj")
                if n in sd)
    w = sd[name]
    with torch.no_grad():
        if w.ndim == 2:
            w.add_(0.05 * torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g))
        else:  # fused experts: change expert 1 only
            w[1].add_(0.05 * torch.randn(w.shape[1], 2, generator=g) @ torch.randn(2, w.shape[2], generator=g))
        v = sd["model.layers.0.self_attn.v_proj.weight"]
        idx = torch.randperm(v.numel(), generator=g)[:8]
        v.view(-1)[idx] += 0.5
        if "model.layers.1.mlp.gate.weight" in sd:  # shift routing a little, so expert usage moves
            sd["model.layers.1.mlp.gate.weight"][2].add_(0.3)


def demo_pair_paths(kind: str = "demo") -> tuple[Path, Path]:
    """(base_dir, tuned_dir) of a tiny random pair, built once per machine."""
    if kind not in DEMOS:
        raise ValueError(f"kind: expected one of {list(DEMOS)}, got {kind!r}")
    root = demo_root() / kind
    base, tuned = root / "base", root / "tuned"
    if (tuned / "config.json").exists():
        return base, tuned
    from workbench.tasks.tokenizer import build_tokenizer
    from workbench.zoo.arch import make_model
    from workbench.zoo.recipes import Arch

    tok = build_tokenizer()
    moe = DEMOS[kind] == "mixtral"
    arch = Arch(family="mixtral" if moe else "llama", n_layers=2, d_model=64, n_heads=4, d_mlp=128,
                n_experts=4 if moe else 0, top_k=2 if moe else 0)
    model = make_model(arch, tok, seed=0).eval()
    tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=demo_root().parent if demo_root().parent.exists() else None))
    model.save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")
    _plant(model, seed=1)
    model.save_pretrained(tmp / "tuned")
    tok.save_pretrained(tmp / "tuned")
    root.mkdir(parents=True, exist_ok=True)
    import shutil

    for sub in ("base", "tuned"):  # rename into place last, so a half-written pair is never used
        dst = root / sub
        try:
            os.replace(tmp / sub, dst)
        except OSError:  # another process got there first: keep theirs (same seeds, same weights)
            if not (dst / "config.json").exists():
                raise
    shutil.rmtree(tmp, ignore_errors=True)
    return base, tuned
