"""Architecture facts read from a HF config, one vocabulary for every family."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arch:
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_experts: int = 0
    top_k: int = 0
    moe_layers: tuple[int, ...] = field(default_factory=tuple)
    gated_mlp: bool = True
    # Hidden width of the *dense* MLPs. In MoE models `d_mlp` is one expert's width, while dense
    # layers (DeepSeek's first_k_dense_replace, Qwen-MoE's mlp_only_layers) use intermediate_size.
    d_mlp_dense: int = 0

    def __post_init__(self) -> None:
        if not self.d_mlp_dense:
            object.__setattr__(self, "d_mlp_dense", self.d_mlp)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def mlp_width(self, layer: int) -> int:
        """Width of layer `layer`'s MLP hidden state (`mlp_post`, the gate rows): expert or dense."""
        return self.d_mlp if layer in self.moe_layers else self.d_mlp_dense

    @property
    def dense_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_layers) if i not in self.moe_layers)


def _first(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def arch_from_config(cfg) -> Arch:
    family = cfg.model_type
    n_layers = int(_first(cfg, "num_hidden_layers", "n_layer"))
    n_heads = int(_first(cfg, "num_attention_heads", "n_head"))
    d_model = int(_first(cfg, "hidden_size", "n_embd"))
    n_kv = int(_first(cfg, "num_key_value_heads", default=n_heads))
    # z is the per-head *value* output; MLA (DeepSeek) keys/queries are wider than values.
    d_head = int(_first(cfg, "v_head_dim", "head_dim", default=d_model // n_heads))
    d_mlp = _first(cfg, "intermediate_size", "n_inner")
    d_mlp = int(d_mlp) if d_mlp is not None else 4 * d_model
    n_experts = int(_first(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    top_k = int(_first(cfg, "num_experts_per_tok", default=0) or 0) if n_experts else 0
    moe: list[int] = []
    d_dense = d_mlp
    if n_experts:
        first_dense = int(getattr(cfg, "first_k_dense_replace", 0) or 0)  # DeepSeek
        mlp_only = set(getattr(cfg, "mlp_only_layers", []) or [])  # Qwen-MoE
        step = int(getattr(cfg, "decoder_sparse_step", 1) or 1)
        moe_freq = int(getattr(cfg, "moe_layer_freq", 1) or 1)
        for i in range(n_layers):
            if i < first_dense or i in mlp_only:
                continue
            if family.startswith("qwen") and (i + 1) % step != 0:
                continue
            if family.startswith("deepseek") and i % moe_freq != 0:
                continue
            moe.append(i)
        d_mlp = int(_first(cfg, "moe_intermediate_size", default=d_mlp))
    gated = family not in ("gpt2", "gpt_neox", "gptj", "opt", "bloom")
    return Arch(
        family=family, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_model=d_model, d_head=d_head,
        d_mlp=d_mlp, d_vocab=int(cfg.vocab_size), n_experts=n_experts, top_k=top_k,
        moe_layers=tuple(moe), gated_mlp=gated, d_mlp_dense=d_dense,
    )
