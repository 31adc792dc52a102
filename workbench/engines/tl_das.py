"""TransformerLens 4's distributed alignment search (`tools.analysis.fit_das`) on a Subject.

The knob's own DAS (`probes.knob_fit`) is checked against this peer: TL trains an orthonormal
`d_model x rank` basis (`torch.nn.utils.parametrizations.orthogonal`) with the interchange
`h' = h + ((h_S - h) B) B^T`, which for rank 1 is exactly `h - (u.h) u + (u.h_S) u`, and
cross-entropy on task logits. We hand it the full next-token logits at the last position and the
source's answer id as the class, so its loss is the knob's loss.

TL's `fit_das` slices one input tensor per batch; we pack ids and attention mask into one
`batch 2 pos` tensor (left padded, so position -1 is every row's last real token) and unpack it
in the task function, which calls the HF model with mask-derived position ids like the engine.
Interventions active on the Subject are *not* applied here (TL owns the hooks for the call).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from workbench.engines.base import position_ids
from workbench.sites import Site


def _packed(subject, targets: Sequence[str], sources: Sequence[str]):
    """Targets then sources tokenized to one width, packed as `batch 2 pos` (ids, mask) for TL's
    tools, and the last-token logits function they call on such a pack."""
    tok = subject.tokenize(list(targets) + list(sources))
    packed = torch.stack([tok.input_ids, tok.attention_mask], 1)
    model = subject.hf_model

    def task_logits(x: Tensor) -> Tensor:
        ids, mask = x[:, 0], x[:, 1]
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits[:, -1]

    return packed, task_logits

def tl_fit_das(subject, site: Site, targets: Sequence[str], sources: Sequence[str], answers: Tensor, *,
               rank: int = 1, epochs: int = 1, batch_size: int = 8, lr: float = 1e-3,
               seed: int = 0) -> tuple[Tensor, tuple[float, ...]]:
    """(basis `d_model rank`, mean loss per epoch) from TL's `fit_das` at `site`, last token."""
    from transformer_lens.tools.analysis import fit_das

    bridge = getattr(subject.engine, "bridge", None)
    if bridge is None:
        raise ValueError(f"subject: TransformerLens's fit_das needs the 'tl' engine, got {subject.engine_name!r}")
    subject.check_site(site)
    if len(targets) != len(sources) or len(targets) != len(answers):
        raise ValueError(f"targets, sources, answers: expected equal lengths, got {len(targets)}, {len(sources)}, "
                         f"{len(answers)}")
    n = len(targets)
    packed, task_logits = _packed(subject, targets, sources)

    last = torch.full((n,), -1, dtype=torch.long)
    res = fit_das(bridge, site.tl_name, packed[:n], packed[n:], torch.as_tensor(answers, dtype=torch.long),
                  task_logits, rank=rank, base_positions=last, source_positions=last, epochs=epochs,
                  batch_size=batch_size, lr=lr, seed=seed)
    return res.basis.detach().clone(), tuple(res.losses)


@torch.no_grad()
def tl_interchange_logits(subject, site: Site, targets: Sequence[str], sources: Sequence[str], basis: Tensor) -> Tensor:
    """Last-token logits `batch d_vocab` of `targets` under TL's `SubspaceInterchange(basis)` from `sources`."""
    from transformer_lens.tools.analysis import SubspaceInterchange, collect_activations, intervened_logits

    bridge = getattr(subject.engine, "bridge", None)
    if bridge is None:
        raise ValueError(f"subject: TransformerLens's interchange needs the 'tl' engine, got {subject.engine_name!r}")
    subject.check_site(site)
    n = len(targets)
    packed, task_logits = _packed(subject, targets, sources)

    last = torch.full((n,), -1, dtype=torch.long)
    b = basis if basis.ndim == 2 else basis[:, None]
    src = collect_activations(bridge, site.tl_name, packed[n:], task_logits, positions=last)
    return intervened_logits(bridge, site.tl_name, SubspaceInterchange(b), packed[:n], src, task_logits,
                             positions=last)
