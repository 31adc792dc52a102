"""Tiny random HF checkpoints of every family the workbench supports, for tests.

    from tests.tiny import tiny_checkpoint, FAMILIES
    path = tiny_checkpoint("llama", tmp_path)          # a save_pretrained dir with tokenizer
    path = tiny_checkpoint("llama")                    # cached once per test session

Each checkpoint is a randomly initialised model (fixed seed) with a small WordLevel
tokenizer (`<bos> <eos> <pad> <unk>` + a few dozen words; every text gets `<bos>`
prepended, as in the organism tokenizers). Nothing is downloaded. Weights are saved as
safetensors; `pickle=True` saves a `.bin`-only checkpoint for the refusal tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

WORDS = (
    "the a is in box apple car key pen cup dog cat red blue green big small on of and to "
    "where what contains paris england france london city river sun moon tree house book "
    "one two three four five six seven eight nine ten yes no not very good bad , . ? !"
).split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
VOCAB = SPECIALS + WORDS  # 4 + 60 ids; model vocab is 64 (or padded up to it)
D_VOCAB = 64

_COMMON = dict(vocab_size=D_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


def _configs():
    import transformers as T

    c = _COMMON
    moe = dict(num_experts_per_tok=2)
    return {
        "gpt2": lambda: T.GPT2Config(vocab_size=D_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     n_inner=48, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "gpt_neox": lambda: T.GPTNeoXConfig(
            vocab_size=D_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5, bos_token_id=1,
            eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
        "llama": lambda: T.LlamaConfig(**c),
        "qwen2": lambda: T.Qwen2Config(**c),
        "gemma2": lambda: T.Gemma2Config(**c, head_dim=8, sliding_window=16, query_pre_attn_scalar=8),
        "mistral": lambda: T.MistralConfig(**c, sliding_window=None),
        "mixtral": lambda: T.MixtralConfig(**c, num_local_experts=4, **moe),
        "qwen2_moe": lambda: T.Qwen2MoeConfig(**c, num_experts=4, moe_intermediate_size=24,
                                              shared_expert_intermediate_size=32, **moe),
        "olmoe": lambda: T.OlmoeConfig(**c, num_experts=4, **moe),
        # Layer 0 dense (first_k_dense_replace), layers 1-2 routed: both kinds of block are tested.
        # MLA expands keys to every head itself, so HF needs num_key_value_heads == heads;
        # values (12) narrower than queries/keys (16), so z's d_head is checked to be v_head_dim.
        "deepseek_v3": lambda: T.DeepseekV3Config(
            **{**c, "num_hidden_layers": 3, "num_key_value_heads": 4}, n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=24,
            first_k_dense_replace=1, n_group=2, topk_group=1, q_lora_rank=16, kv_lora_rank=16,
            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=12, **moe),
    }


FAMILIES: tuple[str, ...] = ("gpt2", "gpt_neox", "llama", "qwen2", "gemma2", "mistral", "mixtral", "qwen2_moe",
                             "olmoe", "deepseek_v3")
MOE_FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "deepseek_v3")


def tiny_tokenizer():
    """A fast WordLevel tokenizer over `VOCAB` that prepends `<bos>` to every text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left")


def tiny_model(family: str, seed: int = 0):
    """The random HF model itself (eager attention, eval mode), not saved."""
    from transformers import AutoModelForCausalLM

    cfgs = _configs()
    if family not in cfgs:
        raise ValueError(f"family: expected one of {list(cfgs)}, got {family!r}")
    cfg = cfgs[family]()
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # Random init leaves norms at exactly 1, biases at 0 and some routers at 0; perturb
    # them so a wrong norm placement, a dropped bias or a tie in routing shows up.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or p.std() == 0:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_checkpoint(family: str, tmp_path: str | Path | None = None, *, seed: int = 0, pickle: bool = False) -> Path:
    """Save a tiny random `family` model + tokenizer; returns the directory.

    With `tmp_path=None` the checkpoint is built once per process and reused (treat it as
    read-only); pass a pytest `tmp_path` for a private copy.
    """
    if tmp_path is None:
        key = (family, seed, pickle)
        if key not in _CACHE:
            _CACHE[key] = tiny_checkpoint(family, Path(_cache_root()) / f"{family}-{seed}-{int(pickle)}",
                                          seed=seed, pickle=pickle)
        return _CACHE[key]
    out = Path(tmp_path)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tiny_model(family, seed).save_pretrained(out, safe_serialization=not pickle)
    if pickle and not any(out.glob("*.bin")):  # transformers 5 always writes safetensors
        sd = {k: v.contiguous() for k, v in tiny_model(family, seed).state_dict().items()}
        for f in out.glob("*.safetensors"):
            f.unlink()
        torch.save(sd, out / "pytorch_model.bin")
    tiny_tokenizer().save_pretrained(out)
    return out


_CACHE: dict[tuple, Path] = {}
_ROOT: list[str] = []


def _cache_root() -> str:
    if not _ROOT:
        import atexit
        import shutil

        _ROOT.append(tempfile.mkdtemp(prefix="wb-tiny-"))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


# --- loaded Subjects, shared across a test session ----------------------------------------
_SUBJECTS: dict[tuple, object] = {}


def guard_track(subject):
    """Register `subject` with the autouse guard of the conftest pytest actually loaded.

    `from tests.conftest import track` imports a *second* copy of tests/conftest.py (pytest
    registers it as module `conftest`), whose list the guard never reads; this finds the
    registered one.
    """
    import sys

    for name in ("conftest", "tests.conftest"):
        mod = sys.modules.get(name)
        if mod is not None and str(getattr(mod, "__file__", "")).endswith(("tests/conftest.py", "tests\\conftest.py")):
            return mod.track(subject)
    return subject


def tiny_subject(family: str, engine: str = "tl"):
    """`workbench.load(tiny_checkpoint(family), engine=engine)`, cached per process and guarded.

    Shared: never leave an intervention or an edit on it (the autouse guard checks).
    """
    key = (family, engine)
    if key not in _SUBJECTS:
        from workbench import load

        _SUBJECTS[key] = guard_track(load(tiny_checkpoint(family), engine=engine))
    return _SUBJECTS[key]


def hf_reference(family: str):
    """The same checkpoint loaded by plain transformers (no engine touches it), cached."""
    key = (family, "hf")
    if key not in _SUBJECTS:
        from transformers import AutoModelForCausalLM

        _SUBJECTS[key] = AutoModelForCausalLM.from_pretrained(tiny_checkpoint(family),
                                                              attn_implementation="eager").eval()
    return _SUBJECTS[key]


# Families every quick run covers (learned positions, RoPE, softmax MoE, MLA + sigmoid MoE);
# heavy tests run the others only under `-m slow` (make test), via `families_param(heavy=True)`.
FAST_FAMILIES = ("gpt2", "llama", "mixtral", "deepseek_v3")


def families_param(*, heavy: bool = False):
    """`pytest.mark.parametrize("family", ...)` over FAMILIES; with heavy=True the non-fast ones are slow."""
    import pytest

    if not heavy:
        return pytest.mark.parametrize("family", FAMILIES)
    return pytest.mark.parametrize("family", [
        f if f in FAST_FAMILIES else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
