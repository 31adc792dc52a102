"""Scripted edit-and-evaluate pipelines (`workbench run FILE.toml`).

A pipeline declares subjects, datasets, steps (fit a probe, fit a knob, find experts, apply
edits, run analyses) and evaluations. The runner evaluates every subject before the edits,
runs the steps in order (edits stay applied to their subject), evaluates again after, and
writes `results.json`, a self-contained `report.html` and each edit as a reusable file.

Resuming: each step's output is stored under `OUT/steps/<id>/` with a key hashed from its
config, its datasets, its subject and every earlier step on that subject. A re-run with the
same file reuses a stored output whose key matches (re-applying a stored edit from its file),
so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from apps.spec import PipelineError, Spec, load_spec

__all__ = ["PipelineError", "RunResult", "load_jsonl", "load_subject_spec", "run_pipeline"]


def load_subject_spec(model: str, engine: str = "tl", adapter: str | None = None):
    """A zoo name, a local checkpoint directory or a hub id -> Subject."""
    from workbench import zoo
    from workbench.models import load

    if not Path(model).exists() and model.split("/")[-1] in zoo.names():
        if adapter is not None:
            return load(zoo.path(model), engine=engine, adapter=adapter)
        return zoo.load(model, engine=engine)
    return load(model, engine=engine, adapter=adapter)


def load_jsonl(path: str | Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
            labels.append(int(row["label"]))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
            raise PipelineError(f"{Path(path).name}: line {i + 1}: expected {{\"text\": str, \"label\": int}} ({e})") from None
    if not texts:
        raise PipelineError(f"{Path(path).name}: no rows")
    return texts, labels


@dataclass
class StepOutput:
    """What a step leaves behind: summary rows, figures, JSON data, and maybe an applied edit."""

    rows: list[dict] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> plotly Figure
    data: dict = field(default_factory=dict)
    edit: Any = None
    value: Any = None  # in-memory object later steps may use (a probe, a knob); not persisted


@dataclass
class Ctx:
    spec: Spec
    out: Path
    reduced: bool
    subjects: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, StepOutput] = field(default_factory=dict)

    def subject(self, name: str):
        if name not in self.subjects:
            s = self.spec.subjects[name]
            self.subjects[name] = load_subject_spec(s["model"], s["engine"], s["adapter"])
        return self.subjects[name]

    def dataset(self, name: str):
        """Examples (for builders), (texts, labels) for JSONL, or a string for text files."""
        if name not in self.datasets:
            d = self.spec.datasets[name]
            if d["builder"]:
                from workbench import tasks

                n = max(16, d["n"] // 4) if self.reduced else d["n"]
                self.datasets[name] = getattr(tasks, d["builder"])(n, seed=d["seed"], split=d["split"], **d["options"])
            elif d["jsonl"]:
                self.datasets[name] = load_jsonl(d["jsonl"])
            else:
                self.datasets[name] = Path(d["text"]).read_text()
        return self.datasets[name]


@dataclass
class RunResult:
    out: Path
    title: str
    rows: list[dict]
    evaluations: list[dict]
    computed: list[str]
    reused: list[str]
    seconds: float

    def summary_table(self) -> str:
        import pandas as pd

        parts = [f"== {self.title} ({self.seconds:.0f} s; computed {len(self.computed)}, reused {len(self.reused)}) =="]
        if self.rows:
            parts.append(pd.DataFrame(self.rows).to_string(index=False))
        if self.evaluations:
            parts.append("\nevaluations (before -> after edits):")
            parts.append(pd.DataFrame(self.evaluations).to_string(index=False))
        return "\n".join(parts)


def edit_effect(subject, edit, texts: list[str]) -> tuple[dict, dict]:
    """What an edit changed inside: weight diff (per parameter) and activation diff (per layer) of
    the original vs a copy with the edit applied. The user's subject is never changed."""
    from workbench.diff import edited_pair
    from workbench.diff_acts import activation_diff
    from workbench.diff_weights import weight_diff

    pair = edited_pair(subject, edit)
    wd = weight_diff(pair, spectra=False)
    ad = activation_diff(pair, texts[:32])
    wf = wd.to_frame()
    changed = wf[wf["rel_norm"] > 0]  # a weight edit names its parameters; an activation edit touches none
    data = {"weights_changed": changed.to_dict("list"), "activations": ad.to_frame().to_dict("list")}
    return data, {"edit: weight diff": wd.plot(), "edit: activation diff": ad.plot()}


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_output(d: Path, key: str, o: StepOutput) -> None:
    d.mkdir(parents=True, exist_ok=True)
    figs = {k: json.loads(f.to_json()) for k, f in o.figures.items()}
    if o.edit is not None:
        o.edit.save(d / "edit")
    (d / "output.json").write_text(json.dumps({"rows": o.rows, "data": o.data, "figures": figs}, default=str))
    (d / "key.txt").write_text(key)  # written last: its presence marks the step as finished


def _load_output(d: Path, key: str) -> StepOutput | None:
    if not (d / "key.txt").exists() or (d / "key.txt").read_text() != key:
        return None
    import plotly.io as pio

    from edits.base import Edit

    raw = json.loads((d / "output.json").read_text())
    figs = {k: pio.from_json(json.dumps(v)) for k, v in raw["figures"].items()}
    edit = Edit.load(d / "edit") if (d / "edit").exists() else None
    return StepOutput(raw["rows"], figs, raw["data"], edit)


def _step_texts(ctx: Ctx, cfg: dict) -> list[str]:
    """Prompts to measure an edit's activation diff on: the step's dataset, else the world's facts."""
    name = cfg.get("dataset")
    if name:
        d = ctx.dataset(name)
        if isinstance(d, tuple):
            return list(d[0])
        if isinstance(d, list):
            return [e.prompt for e in d]
    from workbench import tasks

    return [e.prompt for e in tasks.facts(32, seed=0, split="eval")]


def run_pipeline(file: str | Path, *, out: str | Path | None = None, reduced: bool = False,
                 fresh: bool = False) -> RunResult:
    from apps.steps import EVAL_KINDS, STEP_KINDS

    spec = load_spec(file, step_kinds=STEP_KINDS, eval_kinds=EVAL_KINDS)  # before any model loads
    out = Path(out) if out is not None else Path("runs") / Path(file).stem
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(spec, out, reduced)
    t0 = time.perf_counter()
    computed: list[str] = []
    reused: list[str] = []
    chain: dict[str, list[str]] = {name: [] for name in spec.subjects}  # keys of steps so far, per subject

    def base_key(cfg: dict) -> list:
        ds = {k: spec.datasets[v] for k, v in cfg.items() if k.startswith("dataset") and v in spec.datasets}
        return [cfg, spec.subjects[cfg["subject"]], ds, reduced, spec.seed]

    def evaluate(stage: str) -> dict[str, Any]:
        vals = {}
        for cfg in tqdm(spec.evaluations, desc=f"evaluate ({stage})", leave=False):
            key = _key(base_key(cfg), chain[cfg["subject"]] if stage == "after" else [], stage)
            d = out / "evals" / f"{cfg['id']}-{stage}"
            got = None if fresh else _load_output(d, key)
            if got is None:
                got = EVAL_KINDS[cfg["kind"]].run(ctx, cfg)
                _save_output(d, key, got)
            vals[cfg["id"]] = got.data.get("value")
        return vals

    before = evaluate("before")
    bar = tqdm(spec.steps, desc="steps")
    for cfg in bar:
        bar.set_postfix_str(cfg["id"])
        key = _key(base_key(cfg), chain[cfg["subject"]])
        d = out / "steps" / cfg["id"]
        got = None if fresh else _load_output(d, key)
        kind = STEP_KINDS[cfg["kind"]]
        if got is None:
            got = kind.run(ctx, cfg)
            if got.edit is not None:
                eff, figs = edit_effect(ctx.subject(cfg["subject"]), got.edit, _step_texts(ctx, cfg))
                got.data["edit_effect"] = eff
                got.figures.update(figs)
            _save_output(d, key, got)
            computed.append(cfg["id"])
        else:
            reused.append(cfg["id"])
            got.value = kind.restore(got) if kind.restore else None  # e.g. a probe rebuilt from its data
        if got.edit is not None:
            got.edit.apply(ctx.subject(cfg["subject"]))
        ctx.outputs[cfg["id"]] = got
        chain[cfg["subject"]].append(key)
    after = evaluate("after")

    rows = [r | {"step": c["id"]} for c in spec.steps for r in ctx.outputs[c["id"]].rows]
    evals = [{"evaluation": c["id"], "subject": c["subject"], "before": before[c["id"]], "after": after[c["id"]]}
             for c in spec.evaluations]
    res = RunResult(out, spec.title, rows, evals, computed, reused, time.perf_counter() - t0)
    (out / "results.json").write_text(json.dumps(
        {"title": spec.title, "rows": rows, "evaluations": evals, "computed": computed, "reused": reused,
         "steps": {k: v.data for k, v in ctx.outputs.items()}}, indent=1, default=str))
    from apps.report import write_report

    write_report(out / "report.html", spec, res, ctx.outputs)
    return res
