"""Batched activation capture over a dataset, in RAM or in a memory-mapped on-disk store.

Sequences are sorted by length so each batch carries little padding, run through the
engine with read-only hooks, and written back in the caller's order. All rows are
right-aligned to the longest sequence (left padding), so position -1 is every row's last
real token, and `attention_mask` says which positions are real.

The on-disk store writes one `.npy` file per site, filled batch by batch with plain file
writes (safetensors cannot be appended to), and reads it back memory-mapped, so a dataset
whose activations exceed RAM is captured with only one batch resident at a time.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.sites import Site


@dataclass
class Activations:
    """Per-site tensors (batch first, axes named by `site.axes`), plus the attention mask."""

    tensors: dict[Site, Tensor]
    attention_mask: Tensor
    positions: Any = None
    path: str | None = None
    meta: dict = field(default_factory=dict)

    def __getitem__(self, site: Site) -> Tensor:
        try:
            return self.tensors[site]
        except KeyError:
            raise KeyError(f"{site} was not captured; captured sites: {[str(s) for s in self.tensors]}") from None

    def __contains__(self, site: Site) -> bool:
        return site in self.tensors

    @property
    def sites(self) -> list[Site]:
        return list(self.tensors)

    def axes(self, site: Site) -> tuple[str, ...]:
        ax = site.axes
        if self.positions is not None and site.component != "pattern":
            ax = tuple("pos_selected" if a == "pos" else a for a in ax)
        return ax

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {str(s): t.numpy() if isinstance(t, Tensor) else np.asarray(t) for s, t in self.tensors.items()}

    def pooled(self, site: Site, pooling: str = "mean") -> Tensor:
        """`batch d`: mean over real tokens (or the last token) of a `batch pos d` site."""
        x = torch.as_tensor(self[site])
        if pooling == "last":
            return x[:, -1]
        if pooling != "mean":
            raise ValueError(f"pooling: expected 'mean' or 'last', got {pooling!r}")
        if self.positions is not None:
            return x.mean(1)
        m = self.attention_mask.to(x.dtype)[..., None]
        return (x * m).sum(1) / m.sum(1).clamp(min=1)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        save_file({str(s): torch.as_tensor(t).contiguous() for s, t in self.tensors.items()}
                  | {"__mask__": self.attention_mask.contiguous()}, str(p / "activations.safetensors"))
        (p / "meta.json").write_text(json.dumps({"positions": self.positions, **self.meta}))
        return p

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        p = Path(path)
        meta = json.loads((p / "meta.json").read_text())
        if (p / "activations.safetensors").exists():
            from safetensors.torch import load_file

            d = load_file(str(p / "activations.safetensors"))
            mask = d.pop("__mask__")
            return cls({Site.parse(k): v for k, v in d.items()}, mask, meta.pop("positions"), None, meta)
        mask = torch.from_numpy(np.load(p / "attention_mask.npy"))
        with warnings.catch_warnings():  # read-only memmaps: torch warns that they are not writable
            warnings.simplefilter("ignore", UserWarning)
            tensors = {Site.parse(f.stem): torch.from_numpy(np.load(f, mmap_mode="r"))
                       for f in sorted(p.glob("L*.npy"))}
        return cls(tensors, mask, meta.pop("positions"), str(p), meta)


class _NpyWriter:
    """Fills a `.npy` file row by row with plain file writes.

    A writable memmap would keep every page it touched resident (and counted in RSS) until
    the OS writes it back; seek+write keeps only the current batch in memory.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]):
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()  # header + zeros
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            self.offset = f.tell()
        self.shape = shape
        self.row_bytes = int(np.prod(shape[1:])) * 4
        self.f = open(path, "r+b")

    def write_rows(self, rows: list[int], x: Tensor, p: int, right_align: bool, pattern: bool) -> None:
        P = self.shape[-1] if pattern else self.shape[1]  # the padded length (unused when not aligning)
        for j, i in enumerate(rows):
            if pattern:  # `head q k`: pad each head's square into the bottom-right corner
                full = np.zeros(self.shape[1:], dtype=np.float32)
                full[:, P - p:, P - p:] = x[j].numpy()
                self.f.seek(self.offset + i * self.row_bytes)
                self.f.write(full.tobytes())
            elif right_align:  # rows are `pos ...`, contiguous: real positions sit at the end
                inner = int(np.prod(self.shape[2:])) * 4
                self.f.seek(self.offset + i * self.row_bytes + (P - p) * inner)
                self.f.write(x[j].contiguous().numpy().tobytes())
            else:
                self.f.seek(self.offset + i * self.row_bytes)
                self.f.write(x[j].contiguous().numpy().tobytes())

    def close(self) -> None:
        self.f.close()


def _select(x: Tensor, site: Site, positions) -> Tensor:
    # Head selection already happened in `subject.run(cache=...)`; only positions remain.
    if positions is not None and site.component != "pattern":
        x = x[:, positions]
    return x


@torch.no_grad()
def capture(subject, inputs: Any, sites: Sequence[Site] | Site, *, positions=None, batch_size: int = 64,
            store: str | Path | None = None, progress: bool | None = None) -> Activations:
    """Capture `sites` for every input. `positions`: None (all), an int or a list (e.g. -1)."""
    if isinstance(sites, Site):
        sites = [sites]
    sites = [subject.check_site(s) for s in sites]
    if not sites:
        raise ValueError("sites: expected at least one Site")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if isinstance(positions, int):
        positions = [positions]
    toks = subject.as_tokens(inputs)
    n, P = toks.input_ids.shape
    order = torch.argsort(toks.lengths, stable=True)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]

    def out_shape(site: Site, first: Tensor) -> tuple[int, ...]:
        rest = list(first.shape[1:])
        if site.component == "pattern":
            rest[-2:] = [P, P]
        elif positions is None:
            rest[0] = P
        return (n, *rest)

    outs: dict[Site, Any] = {}
    root = Path(store) if store is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    show = progress if progress is not None else len(batches) > 4
    for idx in tqdm(batches, desc=f"capture {subject.name}", disable=not show, leave=False):
        b = toks[idx]
        _, cache = subject.run(b, cache=sites)
        p = b.input_ids.shape[1]
        for s in sites:
            x = _select(cache[s], s, positions).float()
            if s not in outs:
                shape = out_shape(s, x)
                outs[s] = _NpyWriter(root / f"{s}.npy", shape) if root is not None else torch.zeros(shape)
            dst = outs[s]
            if isinstance(dst, _NpyWriter):
                dst.write_rows(idx.tolist(), x, p, s.component == "pattern" or positions is None,
                               s.component == "pattern")
            elif s.component == "pattern":
                dst[idx, :, P - p:, P - p:] = x
            elif positions is None:
                dst[idx, P - p:] = x
            else:
                dst[idx] = x
    if root is not None:
        np.save(root / "attention_mask.npy", toks.attention_mask.cpu().numpy())
        (root / "meta.json").write_text(json.dumps({"positions": positions, "subject": subject.name}))
        for w in outs.values():
            w.close()
        return Activations.load(root)
    return Activations(outs, toks.attention_mask.cpu(), positions, None, {"subject": subject.name})
