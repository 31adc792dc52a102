"""load(): an HF checkpoint (local dir or hub id) -> Subject; ModelPair of two Subjects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from workbench.arch import arch_from_config
from workbench.params import Params
from workbench.subject import Subject

Engine = Literal["tl", "nnsight"]


def _check_checkpoint(model: str, trust_pickle: bool) -> None:
    p = Path(model)
    looks_local = p.exists() or model.startswith((".", "/", "~")) or os.sep in model and not _hub_like(model)
    if not looks_local:
        return  # a hub id: transformers resolves it (needs a network or a local cache)
    if not p.is_dir():
        raise FileNotFoundError(f"model: no checkpoint directory at {str(p)!r}")
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"model: {str(p)!r} has no config.json; expected a HF checkpoint directory")
    has_st = any(p.glob("*.safetensors"))
    has_pickle = any(p.glob("*.bin")) or any(p.glob("*.pt")) or any(p.glob("*.pth"))
    if not has_st and has_pickle and not trust_pickle:
        raise ValueError(f"model: {str(p)!r} holds only pickle weights (.bin/.pt), which can run arbitrary code "
                         "when loaded; convert to safetensors, or pass trust_pickle=True if you trust the source")
    if not has_st and not has_pickle:
        raise FileNotFoundError(f"model: {str(p)!r} has no weights (*.safetensors)")


def _hub_like(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not Path(model).exists()


def _load_tokenizer(where: str):
    """The checkpoint's tokenizer, verbatim.

    transformers 5's AutoTokenizer picks the class from the *model type* when the saved
    class is the generic fast backend, and e.g. Qwen2Tokenizer then rebuilds its own BPE
    pre-tokenizer over our WordLevel vocab ("the apple" became 2 ids). A generic
    tokenizer.json is loaded as exactly what was saved.
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = Path(where) / "tokenizer_config.json"
    if cfg.exists() and (Path(where) / "tokenizer.json").exists():
        cls = json.loads(cfg.read_text()).get("tokenizer_class")
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(where)
    return AutoTokenizer.from_pretrained(where)


def _hf_load(model: str, *, dtype, device, trust_pickle: bool, adapter: str | None):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="eager",
                                              use_safetensors=None if trust_pickle else True)
    if adapter is not None:
        from peft import PeftModel

        if not Path(adapter).is_dir():
            raise FileNotFoundError(f"adapter: no adapter directory at {adapter!r}")
        # Merge, so the tuned Subject is a plain model of the base architecture (a ModelPair needs that).
        hf = PeftModel.from_pretrained(hf, adapter).merge_and_unload()
    hf = hf.to(device).eval()
    tok = _load_tokenizer(adapter if adapter and (Path(adapter) / "tokenizer.json").exists() else model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return hf, tok


def load(model: str | os.PathLike, *, engine: Engine = "tl", device: str = "cpu", dtype: torch.dtype = torch.float32,
         remote: bool = False, adapter: str | os.PathLike | None = None, trust_pickle: bool = False,
         name: str | None = None) -> Subject:
    """Load a causal LM as a Subject with unprocessed weights (activations equal HF's).

    `engine="tl"` (TransformerLens 4 TransformerBridge, default) or `"nnsight"`
    (`remote=True` runs traces on NDIF). `adapter` applies a PEFT adapter directory.
    """
    model = os.path.expanduser(str(model))  # "~/ckpt" is a local path, not a hub id
    if engine not in ("tl", "nnsight"):
        raise ValueError(f"engine: expected 'tl' or 'nnsight', got {engine!r}")
    if remote and engine != "nnsight":
        raise ValueError("remote=True runs on NDIF through nnsight; the 'tl' engine is local only. "
                         "Use load(..., engine='nnsight', remote=True)")
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype: expected a torch.dtype, got {dtype!r}")
    _check_checkpoint(model, trust_pickle)
    hf, tok = _hf_load(model, dtype=dtype, device=device, trust_pickle=trust_pickle,
                       adapter=None if adapter is None else str(adapter))
    arch = arch_from_config(hf.config)
    params = Params(hf, arch)  # HF names, recorded before an engine re-parents modules
    if engine == "tl":
        from workbench.engines.tl import TLEngine

        eng = TLEngine(model, hf, tok, arch, device)
    else:
        from workbench.engines.nnsight import NNsightEngine

        eng = NNsightEngine(model, hf, tok, arch, device, remote=remote)
    label = name or (Path(model).name if Path(model).exists() else model)
    if adapter is not None:
        label = f"{label}+{Path(str(adapter)).name}"
    return Subject(hf, tok, eng, arch, params, name=label, source=model, device=device)


class ModelPair:
    """(base, tuned): two Subjects of one architecture and tokenizer — the unit of analysis."""

    def __init__(self, base: Subject, tuned: Subject):
        for nm, s in (("base", base), ("tuned", tuned)):
            if not isinstance(s, Subject):
                raise ValueError(f"ModelPair.{nm}: expected a Subject, got {type(s).__name__}")
        a, b = base.arch, tuned.arch
        for f in ("family", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "d_vocab",
                  "n_experts", "top_k", "moe_layers"):
            if getattr(a, f) != getattr(b, f):
                raise ValueError(f"ModelPair: base and tuned differ in architecture: {f} is "
                                 f"{getattr(a, f)!r} vs {getattr(b, f)!r}")
        pa, pb = dict(base.params.items()), dict(tuned.params.items())
        for k in pa:
            if k not in pb or pa[k].shape != pb[k].shape:
                got = "missing" if k not in pb else tuple(pb[k].shape)
                raise ValueError(f"ModelPair: parameter {k!r} has shape {tuple(pa[k].shape)} in base but {got} in tuned")
        if base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
            va, vb = base.tokenizer.get_vocab(), tuned.tokenizer.get_vocab()
            diff = next((w for w in va if vb.get(w) != va[w]), next(iter(set(vb) - set(va)), None))
            raise ValueError(f"ModelPair: base and tuned tokenizers differ (first difference at token {diff!r})")
        if base.engine_name != tuned.engine_name:
            raise ValueError(f"ModelPair: both models must use one engine, got {base.engine_name!r} and "
                             f"{tuned.engine_name!r}")
        self.base, self.tuned = base, tuned

    def __repr__(self) -> str:
        return f"ModelPair(base={self.base.name!r}, tuned={self.tuned.name!r}, engine={self.base.engine_name!r})"

    def __iter__(self):
        return iter((self.base, self.tuned))

    @property
    def arch(self):
        return self.base.arch

    @classmethod
    def from_adapter(cls, base: str, adapter: str, *, engine: Engine = "tl", **kw) -> ModelPair:
        """The most common real fine-tune: a base checkpoint and a PEFT adapter directory."""
        return cls(load(base, engine=engine, **kw), load(base, engine=engine, adapter=adapter, **kw))

    @classmethod
    def load(cls, base: str, tuned: str, *, engine: Engine = "tl", **kw) -> ModelPair:
        return cls(load(base, engine=engine, **kw), load(tuned, engine=engine, **kw))
