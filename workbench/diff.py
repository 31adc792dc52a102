"""Diffs of a ModelPair: what fine-tuning (or an edit) changed, in weights and in activations.

    from workbench.diff import weight_diff, activation_diff, logit_lens, diff_lens, edited_pair
    pair = wb.ModelPair.load(base_path, tuned_path)
    weight_diff(pair).plot()                  # layer x module heatmap of |dW| / |W|
    activation_diff(pair, texts).plot()       # cosine / linear CKA per layer, KL per position
    logit_lens(pair, "the apple is in").plot()
    diff_lens(pair, texts).plot()             # tokens the fine-tune pushes up, per layer

    pair = edited_pair(subject, edit)         # (original, edited copy): every view shows an edit

The implementations live in `diff_weights.py`, `diff_acts.py` and `lens.py`; this module is
the one import for scripts and the app.
"""

from __future__ import annotations

import torch

from workbench.diff_acts import ActivationDiff, activation_diff, cka_distance, cka_feature_space
from workbench.diff_weights import (
    DareCheck,
    WeightDiff,
    dare_check,
    effective_rank,
    module_of,
    top_share,
    weight_diff,
)
from workbench.lens import DiffLens, LogitLens, diff_lens, logit_lens
from workbench.models import ModelPair, load

__all__ = [
    "ActivationDiff", "DareCheck", "DiffLens", "LogitLens", "WeightDiff", "activation_diff", "cka_distance",
    "cka_feature_space", "copy_subject", "dare_check", "diff_lens", "edited_pair", "effective_rank", "logit_lens",
    "module_of", "top_share", "weight_diff",
]


@torch.no_grad()
def copy_subject(subject, *, name: str | None = None):
    """An independent copy of `subject` (no shared parameter tensors, no shared modules).

    `copy.deepcopy` is not safe on a TransformerLens-bridged model: the engine wraps each
    attention module's `forward` in a closure bound to the *original* module, so a deep copy's
    attention silently keeps running the original's weights. We reload the checkpoint with the
    same engine and then copy every current parameter value over (so edits already applied to
    `subject`, or in-memory changes, are carried into the copy bit for bit).
    """
    src = getattr(subject, "source", None)
    if not src:
        raise ValueError(f"subject: {subject.name!r} records no source checkpoint to reload a copy from")
    dtype = next(iter(dict(subject.params.items()).values())).dtype
    twin = load(src, engine=subject.engine_name, device=subject.device, dtype=dtype, name=name or subject.name)
    theirs = dict(twin.params.items())
    for k, v in subject.params.items():
        if k not in theirs or theirs[k].shape != v.shape:
            raise ValueError(f"subject: reloading {src!r} gave a model without parameter {k!r} of shape "
                             f"{tuple(v.shape)}; cannot copy {subject.name!r}")
        theirs[k].copy_(v.detach())
    twin._identity = subject.identity()  # the copy is the same model an edit was fitted for
    return twin


def edited_pair(subject, edit, *, edited: object | None = None) -> ModelPair:
    """ModelPair(subject, a copy of subject with `edit` applied): every diff view then shows the edit.

    `subject` itself is never changed. Pass `edited=` an existing copy to reuse it (the edit is
    applied to it). The edit stays applied on the copy; `pair.tuned._edits[-1].revert()` undoes it.
    """
    if not hasattr(edit, "apply"):
        raise ValueError(f"edit: expected an Edit (with .apply(subject)), got {type(edit).__name__}")
    twin = edited if edited is not None else copy_subject(subject, name=f"{subject.name}+{getattr(edit, 'method', 'edit')}")
    edit.apply(twin)
    return ModelPair(subject, twin)
