"""PEFT adapters as the tuned model, and ModelPair's checks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.tiny import guard_track, tiny_checkpoint, tiny_subject
from workbench import COMPONENTS, ModelPair, Site, load
from workbench.engines.base import position_ids

PROMPTS = ["the apple is in box", "where is paris ?"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter with non-zero B (so it changes the model), made with peft on tiny Llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama"))
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                     init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora")
    get_peft_model(base, cfg).save_pretrained(out)
    return out


def _unmerged(adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama"), attn_implementation="eager")
    return PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.mark.parametrize("engine", ["tl", "nnsight"])
def test_adapter_loads_as_tuned_model_equal_to_unmerged_peft(adapter, engine):
    tuned = guard_track(load(tiny_checkpoint("llama"), adapter=adapter, engine=engine))
    base = tiny_subject("llama", engine)
    toks = tuned.tokenize(PROMPTS)
    sites = [Site(layer, "resid_post") for layer in range(tuned.arch.n_layers - 1)]
    logits, cache = tuned.run(toks, cache=sites)
    with torch.no_grad():
        ref = _unmerged(adapter)(input_ids=toks.input_ids, attention_mask=toks.attention_mask,
                                 position_ids=position_ids(toks.attention_mask), output_hidden_states=True)
    real = toks.attention_mask.bool()
    torch.testing.assert_close(logits[real], ref.logits[real], atol=1e-5, rtol=0)
    for x in sites:
        torch.testing.assert_close(cache[x][real], ref.hidden_states[x.layer + 1][real], atol=1e-5, rtol=0)
    assert not torch.allclose(logits, base.forward(toks), atol=1e-3), "the adapter should change the model"
    assert tuned.name.endswith(f"+{adapter.name}")


def test_model_pair_from_adapter(adapter):
    pair = ModelPair.from_adapter(str(tiny_checkpoint("llama")), str(adapter))
    for s in pair:
        guard_track(s)
    assert pair.arch == pair.tuned.arch
    toks = pair.base.tokenize(PROMPTS)
    assert not torch.allclose(pair.base.forward(toks), pair.tuned.forward(toks), atol=1e-3)


@pytest.mark.parametrize("engine", ["tl", "nnsight"])
def test_pair_of_a_model_with_itself_has_zero_difference_everywhere(engine):
    a = tiny_subject("mixtral", engine)
    b = guard_track(load(tiny_checkpoint("mixtral"), engine=engine))
    pair = ModelPair(a, b)
    sites = [Site(layer, c) for layer in range(a.arch.n_layers) for c in COMPONENTS if a.engine.supports(Site(layer, c))]
    la, ca = pair.base.run(PROMPTS, cache=sites)
    lb, cb = pair.tuned.run(PROMPTS, cache=sites)
    assert torch.equal(la, lb)
    for x in sites:
        assert torch.equal(ca[x], cb[x]), x
    assert a.identity() == b.identity()


def test_pair_refuses_different_architectures():
    with pytest.raises(ValueError, match="family is 'llama' vs 'gpt2'"):
        ModelPair(tiny_subject("llama"), tiny_subject("gpt2"))
    with pytest.raises(ValueError, match="one engine"):
        ModelPair(tiny_subject("llama", "tl"), tiny_subject("llama", "nnsight"))
    with pytest.raises(ValueError, match="ModelPair.tuned: expected a Subject"):
        ModelPair(tiny_subject("llama"), "llama")


def test_pair_refuses_a_different_tokenizer(tmp_path):
    other = tmp_path / "swapped"
    shutil.copytree(tiny_checkpoint("llama"), other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["apple"], vocab["car"] = vocab["car"], vocab["apple"]
    (other / "tokenizer.json").write_text(json.dumps(tj))
    b = guard_track(load(other))
    with pytest.raises(ValueError, match="tokenizers differ .*'(apple|car)'"):
        ModelPair(tiny_subject("llama"), b)
