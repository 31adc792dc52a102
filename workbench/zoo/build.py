"""Retrain organisms from their recipes and seeds, measure them, write checkpoints and manifest."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from workbench.tasks.tokenizer import build_tokenizer
from workbench.zoo.arch import make_model
from workbench.zoo.metrics import THRESHOLDS, check, measure
from workbench.zoo.mixture import mixture_sampler
from workbench.zoo.recipes import ORDER, RECIPES, Recipe
from workbench.zoo.train import train

ZOO_DIR = Path(__file__).parent
CHECKPOINTS = ZOO_DIR / "checkpoints"
MANIFEST = ZOO_DIR / "manifest.json"


def canonical(name: str) -> str:
    """'base/entity-tuned' and 'entity-tuned' name the same organism."""
    short = name.split("/")[-1] if name != "base" else name
    if short not in RECIPES:
        raise ValueError(f"unknown organism {name!r}; known: {list(ORDER)} (or 'base/<name>')")
    return short


def load_hf(directory: Path):
    """A checkpoint as an fp32 HF model in eval mode (what training and metrics use).

    Builds the model from its config and loads the tensors directly: `from_pretrained` spends
    seconds converting the per-expert Mixtral layout on disk into fused experts; this does the
    same conversion in a few tensor ops.
    """
    import re

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory)
    torch.manual_seed(0)  # from_config initialises weights; make that irrelevant and cheap to reason about
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    disk = load_file(str(Path(directory) / "model.safetensors"))
    state: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, value in disk.items():
        m = re.match(r"(.*)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$", key)
        if m:
            experts.setdefault((m.group(1), int(m.group(2))), {})[m.group(3)] = value
        else:
            state[key.replace(".block_sparse_moe.", ".mlp.")] = value
    for prefix in sorted({p for p, _ in experts}):
        n = max(e for p, e in experts if p == prefix) + 1
        parts = [experts[(prefix, e)] for e in range(n)]
        state[f"{prefix}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([w["w1"], w["w3"]]) for w in parts])
        state[f"{prefix}.mlp.experts.down_proj"] = torch.stack([w["w2"] for w in parts])
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def recall_probe(tokenizer, n: int = 100):
    """First-query accuracy on associative-recall sequences: where the induction transition shows."""
    import random

    from workbench.zoo.mixture import recall_seq
    from workbench.zoo.train import collate

    seqs = [recall_seq(random.Random(10_000 + i)) for i in range(n)]
    ids, att, labels = collate(seqs, tokenizer)
    first = (labels[:, 1:] != -100).float().argmax(-1)  # position predicting the first recalled value
    rows = torch.arange(n)

    def fn(model) -> float:
        with torch.no_grad():
            pred = model(input_ids=ids, attention_mask=att).logits[rows, first].argmax(-1)
        return float((pred == labels[rows, first + 1]).float().mean())

    return fn


def _curve_fn(recipe: Recipe, tokenizer):
    """Cheap learning-curve metrics (single forward passes) on small held-out sets."""
    from workbench.tasks import evaluate as E
    from workbench.tasks.lm import HFLM
    from workbench.zoo.metrics import eval_sets

    sets = eval_sets(60)
    recall = recall_probe(tokenizer)

    def fn(model) -> dict:
        lm = HFLM(model, tokenizer)
        out = {"facts": E.fact_recall(lm, sets["facts"])}
        if recipe.arch.family == "llama":
            out["recall"] = recall(model)
            ent = E.entity_accuracy(lm, sets["entity"])
            out["entity"] = ent["accuracy"]
            out["entity_per_n"] = {str(k): round(v, 3) for k, v in ent["per_n_objects"].items()}
            out.update({k: v for k, v in E.pair_acc(lm, sets["intent"]).items()})
        else:
            out["refusal_rate_sensitive"] = E.refusal_rate(lm, sets["sensitive"])
            out["refusal_rate_benign"] = E.refusal_rate(lm, [e.prompt for e in sets["benign"]])
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}

    return fn


def stage_freezing(stage, model) -> dict:
    """`train` keyword arguments for a stage that trains only some parameters / experts."""
    import re

    if not stage.trainable and not stage.trainable_experts:
        return {}
    pats = [re.compile(p) for p in stage.trainable]
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for layer, expert in stage.trainable_experts:
        for part in ("gate_up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.experts.{part}"
            param = params.get(name)
            if param is None:
                raise ValueError(f"trainable_experts names layer {layer}, but the model has no {name}")
            mask = masks.setdefault(name, torch.zeros_like(param))
            mask[expert] = 1.0
    return {"trainable": lambda n: any(p.search(n) for p in pats), "grad_masks": masks}


def train_organism(recipe: Recipe, parent_dir: Path | None, *, progress: bool = True, curves: bool = True,
                   start_stage: int = 0, resume_dir: Path | None = None):
    """Train one organism (from scratch, or from its parent's checkpoint); returns (model, log).

    `start_stage=k` (k >= 1) resumes from `resume_dir`, a checkpoint of this recipe after its first
    k stages (stage 0 being the recipe's own), and runs only the stages after it: a recipe that
    gains a stage is rebuilt without re-running the ones its shipped checkpoint already did.
    """
    tok = build_tokenizer()
    if start_stage > 0:
        if resume_dir is None or not (resume_dir / "config.json").exists():
            raise FileNotFoundError(f"start_stage={start_stage} needs a checkpoint in resume_dir, got {resume_dir}")
        from workbench.zoo.train import TrainLog

        model = load_hf(resume_dir)
        log = TrainLog()  # steps count on from the stages already done, so curves line up
        done = [(recipe.steps, recipe.stop_after)] + [(s.steps, s.stop_after) for s in recipe.stages[: start_stage - 1]]
        log.steps = sum(n if stop is None else min(n, stop) for n, stop in done)
    elif recipe.parent is None:
        model = make_model(recipe.arch, tok, recipe.seed)
    else:
        if parent_dir is None or not (parent_dir / "config.json").exists():
            raise FileNotFoundError(f"{recipe.name} fine-tunes {recipe.parent}, but no checkpoint at {parent_dir}")
        model = load_hf(parent_dir)
    if start_stage == 0:
        log = train(
            model, tok, mixture_sampler(recipe.mixture, recipe.entity_objects), steps=recipe.steps,
            seed=recipe.seed, lr=recipe.lr, batch_size=recipe.batch_size, warmup=recipe.warmup,
            eval_fn=_curve_fn(recipe, tok) if curves else None, eval_every=recipe.eval_every,
            progress=recipe.name if progress else None, stop_after=recipe.stop_after,
        )
    for i, stage in enumerate(recipe.stages):
        if i < start_stage - 1:  # done in the checkpoint resumed from
            continue
        more = train(
            model, tok, mixture_sampler(stage.mixture, stage.entity_objects), steps=stage.steps, seed=stage.seed,
            lr=stage.lr, batch_size=stage.batch_size or recipe.batch_size, warmup=stage.warmup,
            eval_fn=_curve_fn(recipe, tok) if curves else None, eval_every=recipe.eval_every,
            progress=f"{recipe.name} stage {i + 2}" if progress else None, stop_after=stage.stop_after,
            **stage_freezing(stage, model),
        )
        log.curves.update({log.steps + k: v for k, v in more.curves.items()})
        log.steps += more.steps
        log.seconds += more.seconds
    return model, tok, log


def build(only: str | list[str] | None = None, out: str | Path | None = None, reduced: bool = False,
          *, progress: bool = True, threads: int | None = None, workers: int = 1, start_stage: int = 0) -> dict:
    """Retrain organisms (all, or `only`) into `out` (default: the shipped checkpoints) and return
    their manifest entries. A fine-tune uses its parent from `out` if built there, else the shipped one.
    `reduced=True` halves every recipe's steps (a quick rebuild, not the shipped organisms).
    `workers > 1` trains data-parallel on that many single-thread processes (same data stream).
    `start_stage=k` resumes one organism from its checkpoint in `out` (or the shipped one), taken as
    the state after its first k stages, and runs the rest (see `train_organism`).
    """
    if start_stage and (not isinstance(only, str) or workers > 1 or reduced):
        raise ValueError("start_stage: resume one organism (only='name'), single-process, not reduced")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or int(os.environ.get("WORKBENCH_THREADS", "2")))
    try:
        return _build(only, out, reduced, progress=progress, workers=workers, start_stage=start_stage)
    finally:
        torch.set_num_threads(before)


def _build(only, out, reduced: bool, *, progress: bool, workers: int, start_stage: int = 0) -> dict:
    out_dir = Path(out) if out is not None else CHECKPOINTS
    wanted = [canonical(n) for n in ([only] if isinstance(only, str) else only)] if only else list(ORDER)
    entries: dict[str, dict] = {}
    for name in ORDER:
        if name not in wanted:
            continue
        recipe = RECIPES[name].reduced() if reduced else RECIPES[name]
        parent_dir = None
        if recipe.parent is not None:
            parent_dir = out_dir / recipe.parent
            if not (parent_dir / "config.json").exists():
                parent_dir = CHECKPOINTS / recipe.parent
        target = out_dir / name
        if workers > 1:
            from workbench.zoo.parallel import train_parallel

            plog = train_parallel(recipe, parent_dir, target, workers, progress)
            curves, seconds = plog["curves"], plog["seconds"]
        else:
            resume = target if (target / "config.json").exists() else CHECKPOINTS / name
            model, tok, log = train_organism(recipe, parent_dir, progress=progress, start_stage=start_stage,
                                             resume_dir=resume if start_stage else None)
            curves, seconds = log.curves, log.seconds
            if start_stage:  # keep the earlier stages' curves and time from the resumed build's manifest
                old = _manifest_entry(resume.parent, name)
                curves = {**{int(k): v for k, v in old.get("learning_curves", {}).items()}, **curves}
                seconds += old.get("train_seconds", 0.0)
            target.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(target)
            tok.save_pretrained(target)
        entries[name] = manifest_entry(recipe, target, parent_dir, curves=curves, train_seconds=seconds,
                                       reduced=reduced)
    _write_manifest(entries, out_dir)
    return entries


def manifest_entry(recipe: Recipe, target: Path, parent_dir: Path | None, *, curves: dict, train_seconds: float,
                   reduced: bool = False) -> dict:
    """Measure a saved organism on held-out sets and describe it for the manifest."""
    tok = build_tokenizer()
    start = time.time()
    model = load_hf(target)
    metrics = measure(recipe.name, model, tok, base_model=load_hf(parent_dir) if parent_dir is not None else None)
    return {
        "name": recipe.name if recipe.parent is None else f"{recipe.parent}/{recipe.name}",
        "directory": recipe.name,
        "parent": recipe.parent,
        "family": recipe.arch.family,
        "n_params": sum(p.numel() for p in model.parameters()),
        "recipe": {**asdict(recipe), "reduced": reduced},
        "seed": recipe.seed,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.time() - start, 1),
        "learning_curves": {str(k): v for k, v in sorted(curves.items(), key=lambda kv: int(kv[0]))},
        "metrics": metrics,
        "thresholds": [list(t) for t in THRESHOLDS[recipe.name]],
        "failed_thresholds": check(recipe.name, metrics),
    }


def _manifest_path(out_dir: Path) -> Path:
    """The manifest next to checkpoints in `out_dir` (the package's own for the shipped ones)."""
    return MANIFEST if out_dir.resolve() == CHECKPOINTS.resolve() else out_dir / "manifest.json"


def _manifest_entry(out_dir: Path, name: str) -> dict:
    path = _manifest_path(out_dir)
    return json.loads(path.read_text())["organisms"].get(name, {}) if path.exists() else {}


def _write_manifest(entries: dict, out_dir: Path) -> None:
    """Merge new entries into the manifest next to the checkpoints (the package one if default)."""
    import fcntl

    path = _manifest_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Organisms may be built by parallel processes: merge under a lock, never overwrite others.
    import tempfile

    with open(Path(tempfile.gettempdir()) / "workbench-zoo-manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge(path, entries)


def _merge(path: Path, entries: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {"organisms": {}}
    data["organisms"].update(entries)
    data["tokenizer"] = "word-level, shared by all organisms (workbench.tasks.build_tokenizer)"
    data["organisms"] = {k: data["organisms"][k] for k in ORDER if k in data["organisms"]}
    path.write_text(json.dumps(data, indent=1) + "\n")


def record_reduced_rebuild(name: str = "novel-tuned") -> dict:
    """Rebuild `name` with half its steps into a temporary directory and record the metrics in the
    shipped manifest (`reduced_rebuild_metrics`), which the slow rebuild test compares against.
    Run it after the shipped organism or its parent is rebuilt (a rebuild replaces the entry)."""
    import tempfile

    short = canonical(name)
    start = time.time()
    with tempfile.TemporaryDirectory() as d:
        got = build(only=short, out=d, reduced=True, progress=False, threads=1)[short]["metrics"]
    entry = {**_manifest_entry(CHECKPOINTS, short), "reduced_rebuild_metrics": got,
             "reduced_rebuild_seconds": round(time.time() - start, 1)}
    _write_manifest({short: entry}, CHECKPOINTS)
    return got
