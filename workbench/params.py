"""Named weight views of a Subject, under HF's own parameter names.

Engines may re-parent modules (the TransformerBridge wraps each HF module), which renames
`state_dict` keys; the Parameter *objects* stay the same. So we record HF's names once,
before any engine touches the model, and every edit goes through these views.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from workbench.arch import Arch

# family -> (gate-like first MLP matrix, stored transposed?)  GPT-2's Conv1D stores [in, out].
_GATE = {
    "gpt2": ("transformer.h.{l}.mlp.c_fc.weight", True),
    "gpt_neox": ("gpt_neox.layers.{l}.mlp.dense_h_to_4h.weight", False),
}
_DEFAULT_GATE = ("model.layers.{l}.mlp.gate_proj.weight", False)
_ROUTER = ("model.layers.{l}.mlp.gate.weight", "model.layers.{l}.mlp.router.weight")


class Params:
    def __init__(self, model: nn.Module, arch: Arch):
        self.arch = arch
        self._p: dict[str, nn.Parameter] = dict(model.named_parameters())
        # Tied embeddings appear once in named_parameters(); that is what we want for edits.

    def names(self) -> list[str]:
        return list(self._p)

    def __getitem__(self, name: str) -> nn.Parameter:
        try:
            return self._p[name]
        except KeyError:
            raise KeyError(f"no parameter named {name!r}; e.g. {self.names()[:4]}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._p

    def items(self):
        return self._p.items()

    def gate_name(self, layer: int) -> tuple[str, bool]:
        """The parameter holding layer `layer`'s gate rows, and whether it is stored transposed."""
        if not 0 <= layer < self.arch.n_layers:
            raise ValueError(f"layer: expected 0 <= layer < {self.arch.n_layers}, got {layer}")
        if self.arch.is_moe and layer in self.arch.moe_layers:
            raise ValueError(f"layer {layer} is a mixture-of-experts layer; it has no single gate projection")
        tpl, transposed = _GATE.get(self.arch.family, _DEFAULT_GATE)
        name = tpl.format(l=layer)
        if name not in self._p:
            raise ValueError(f"{self.arch.family}: no gate projection found at {name!r}")
        return name, transposed

    def gate(self, layer: int) -> Tensor:
        """Gate rows of one layer as a `[d_mlp, d_model]` view (writes go to the model)."""
        name, transposed = self.gate_name(layer)
        w = self._p[name].data
        return w.T if transposed else w

    def router(self, layer: int) -> Tensor:
        for tpl in _ROUTER:
            if tpl.format(l=layer) in self._p:
                return self._p[tpl.format(l=layer)].data
        raise ValueError(f"layer {layer} has no router (MoE layers: {list(self.arch.moe_layers)})")

    def snapshot(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self._p.items()}

    def identity(self) -> str:
        """A short hash of names, shapes and weight contents: what an edit was made for."""
        h = hashlib.sha256()
        for k, v in self._p.items():
            t = v.detach().float().flatten()
            h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
            h.update(torch.stack([t.sum(), t.abs().sum(), t[: min(64, t.numel())].sum()]).numpy().tobytes())
        return h.hexdigest()[:16]
