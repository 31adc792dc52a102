"""The one conformance table every registered edit passes.

Every module under `edits/` is imported, so each `@register`ed class in `edits.base.REGISTRY`
joins the table. An edit provides `classmethod example(subject)` (a small valid instance made
for `subject`) and may set `example_family: ClassVar[str]` to pick the tiny random model it is
exercised on (default: llama if `example` works there, else mixtral). See the contract at the top of
`edits/base.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch

import edits
from edits.base import REGISTRY, Edit, applied_edits
from edits.surgery import ModelSurgery
from tests.conftest import track
from tests.tiny import tiny_checkpoint, tiny_tokenizer
from workbench import load

for _m in pkgutil.iter_modules(edits.__path__):
    importlib.import_module(f"edits.{_m.name}")

METHODS = sorted(REGISTRY)
TEXTS = ["the apple is in box", "where is paris ? paris is in", "the big dog and the small cat"]
_SUBJECTS: dict[tuple, object] = {}


def _family(cls) -> str:
    """`cls.example_family` if set; else the first of llama, mixtral on which `example` works."""
    fam = getattr(cls, "example_family", None)
    if fam is not None:
        return fam
    for fam in ("llama", "mixtral"):
        try:
            cls.example(_subject(fam))
            return fam
        except (ValueError, NotImplementedError):
            continue
    return "llama"  # let the table show the example's own error


def _reshaped_checkpoint(family: str) -> Path:
    """The same family with other shapes everywhere (d_model 48, d_mlp 64, 1 layer, 2 experts): whatever an
    edit touches, its shape differs here, so even an edit without an identity pin must be refused."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tiny_checkpoint(family)).parent / f"{family}-reshaped"
    if not (out / "config.json").exists():
        cfg = AutoConfig.from_pretrained(tiny_checkpoint(family))
        for k, v in {"hidden_size": 48, "n_embd": 48, "intermediate_size": 64, "n_inner": 64,
                     "num_hidden_layers": 1, "n_layer": 1, "num_local_experts": 2, "num_experts": 2,
                     "n_routed_experts": 2, "moe_intermediate_size": 40}.items():
            if hasattr(cfg, k):
                setattr(cfg, k, v)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").save_pretrained(out)
        tiny_tokenizer().save_pretrained(out)
    return out


def _subject(family: str, variant: str = "main"):
    key = (family, variant)
    if key not in _SUBJECTS:
        path = {"main": lambda: tiny_checkpoint(family), "other": lambda: tiny_checkpoint(family, seed=1),
                "reshaped": lambda: _reshaped_checkpoint(family)}[variant]()
        _SUBJECTS[key] = track(load(path, name=f"{family}-{variant}"))
    return _SUBJECTS[key]


def _logits(subject) -> torch.Tensor:
    with torch.no_grad():
        return subject.forward(TEXTS)


def _hash_dir(path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(path).rglob("*")) if f.is_file()}


@pytest.fixture(params=METHODS)
def case(request):
    cls = REGISTRY[request.param]
    subject = _subject(_family(cls))
    edit = cls.example(subject)
    assert isinstance(edit, cls) and dataclasses.is_dataclass(edit)
    return cls, subject, edit


def test_registry_is_not_empty():
    assert {"model_surgery", "model_surgery_act"} <= set(METHODS)


def test_apply_changes_the_output_and_revert_is_bit_exact(case):
    _, subject, edit = case
    weights = subject.params.snapshot()
    before = _logits(subject)
    h = edit.apply(subject)
    try:
        assert applied_edits(subject)[-1] is edit
        during = _logits(subject)
    finally:
        h.revert()
    assert (during - before).abs().max() > 1e-4, "applying the edit did not change the logits"
    assert torch.equal(_logits(subject), before)
    for k, v in subject.params.items():
        assert torch.equal(v.detach(), weights[k]), k
    assert applied_edits(subject) == [] and subject.active == ()
    h.revert()  # idempotent


def test_context_manager_reverts_on_exception(case):
    _, subject, edit = case
    before = _logits(subject)
    with pytest.raises(KeyError):
        with edit.applied(subject):
            raise KeyError("boom")
    assert torch.equal(_logits(subject), before) and applied_edits(subject) == []


def test_save_load_reapply_gives_identical_outputs(case, tmp_path):
    cls, subject, edit = case
    path = edit.save(tmp_path / "edit")
    assert sorted(f.name for f in path.iterdir()) == ["delta.safetensors", "edit.json"]
    # "Only the delta": far smaller than the model's weights.
    n_model = sum(v.numel() * v.element_size() for _, v in subject.params.items())
    assert sum(f.stat().st_size for f in path.iterdir()) < n_model / 2
    back = Edit.load(path)
    assert type(back) is cls and back == edit
    with edit.applied(subject):
        a = _logits(subject)
    with back.applied(subject):
        b = _logits(subject)
    assert torch.equal(a, b)


def test_stacking_two_edits_reverts_to_the_original(case):
    cls, subject, edit = case
    other = _partner(cls, subject)
    before = _logits(subject)
    h1 = edit.apply(subject)
    h2 = other.apply(subject)
    try:
        both = _logits(subject)
        with pytest.raises(RuntimeError, match="reverse order"):
            h1.revert()
    finally:
        h2.revert()
        h1.revert()
    with edit.applied(subject):
        only = _logits(subject)
    assert not torch.equal(both, only)
    assert torch.equal(_logits(subject), before) and applied_edits(subject) == []


def _partner(cls, subject) -> Edit:
    """A different registered edit valid on the same model, to stack with."""
    if cls is not ModelSurgery and subject.arch.dense_layers:
        return ModelSurgery.example(subject).with_alpha(-3.0)
    for m in METHODS:
        other = REGISTRY[m]
        if other is not cls:
            try:
                return other.example(subject)
            except (ValueError, NotImplementedError):
                continue
    pytest.fail(f"no other registered edit runs on {_family(cls)} to stack {cls.__name__} with")


def test_checkpoint_on_disk_is_never_written(case, tmp_path):
    cls, subject, edit = case
    ckpt = Path(subject.source)
    before = _hash_dir(ckpt)
    with edit.applied(subject):
        _logits(subject)
        edit.save(tmp_path / "e")
    Edit.load(tmp_path / "e").apply(subject).revert()
    assert _hash_dir(ckpt) == before


def test_refused_on_a_model_it_was_not_made_for(case):
    cls, subject, edit = case
    fam = _family(cls)
    for variant in ("other", "reshaped"):
        target = _subject(fam, variant)
        assert target.identity() != subject.identity()
        before = _logits(target)
        with pytest.raises(ValueError, match="made for"):
            edit.apply(target)
        assert applied_edits(target) == [] and torch.equal(_logits(target), before)
    # Without the identity pin, other shapes are still refused at apply time.
    loose = dataclasses.replace(edit, model_id=None)
    target = _subject(fam, "reshaped")
    before = _logits(target)
    try:
        h = loose.apply(target)
    except ValueError:
        pass
    else:
        h.revert()
        pytest.fail(f"{cls.__name__} with model_id=None was applied to a model of other shapes "
                    f"({target.arch}); check shapes in check_compatible")
    assert applied_edits(target) == [] and torch.equal(_logits(target), before)
