"""Step and evaluation kinds a pipeline file can name.

Each kind declares its keys (validated before any model loads) and a `run(ctx, cfg)` that
calls the library — the same functions a notebook calls — and returns a `StepOutput` whose
rows state the method's effect *against its control*.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from apps.pipeline import Ctx, StepOutput
from apps.spec import Field


@dataclass(frozen=True)
class Kind:
    schema: dict[str, Field]
    run: Callable[[Ctx, dict], StepOutput]
    needs_steps: tuple[str, ...] = ()
    restore: Callable[[StepOutput], Any] | None = None


def _texts_labels(ctx: Ctx, name: str) -> tuple[list[str], list[int]]:
    d = ctx.dataset(name)
    if isinstance(d, tuple):
        return d
    return [e.prompt for e in d], [int(e.label) for e in d]


def _prompts(ctx: Ctx, name: str, label: int | None = None) -> list[str]:
    texts, labels = _texts_labels(ctx, name)
    return [t for t, y in zip(texts, labels, strict=True) if label is None or y == label]


JUDGES: dict[str, Callable[[str], Any]] = {}


def judge(name: str) -> Callable[[str], Any]:
    from workbench import tasks

    judges = {"toxic": tasks.is_toxic, "refusal": tasks.is_refusal,
              "novel": lambda t: tasks.novel_domain(t) is not None}
    return judges[name]


# --- probe --------------------------------------------------------------------------------
def _probe_data(ctx: Ctx, cfg: dict) -> tuple[list[str], list[int]]:
    """Texts and labels: the prompt and its label by default; for builder datasets also the full
    text (prompt + continuation) and a label from the examples' meta, as Model Surgery's probe
    reads it (label 1 = the continuation is toxic: `text = "text"`, `label = "toxic_target"`)."""
    if cfg["text"] == "prompt" and cfg["label"] == "label":
        return _texts_labels(ctx, cfg["dataset"])
    d = ctx.dataset(cfg["dataset"])
    if isinstance(d, (tuple, str)):
        raise ValueError(f"text/label: other than 'prompt'/'label' need a builder dataset; {cfg['dataset']!r} is not one")
    texts = [e.prompt if cfg["text"] == "prompt" else e.text for e in d]
    if cfg["label"] == "label":
        return texts, [int(e.label) for e in d]
    if any(cfg["label"] not in e.meta for e in d):
        raise ValueError(f"label: expected 'label' or a meta key of every example, e.g. {sorted(d[0].meta)}; "
                         f"got {cfg['label']!r}")
    return texts, [int(e.meta[cfg["label"]]) for e in d]


def run_probe(ctx: Ctx, cfg: dict) -> StepOutput:
    from probes.linear import BehaviorProbe, collect_features, probe_sweep

    s = ctx.subject(cfg["subject"])
    texts, labels = _probe_data(ctx, cfg)
    sites = s.sites(cfg["component"])
    feats = collect_features(s, texts, sites, cfg["pooling"])
    sweep = probe_sweep(s, texts, labels, sites, cv=cfg["cv"], seed=ctx.spec.seed, pooling=cfg["pooling"],
                        features=feats)
    best = sweep.best_site
    # The direction an edit uses may come from another layer than the best-reading one (Model
    # Surgery edits best from a middle layer's probe on `base`: notebooks/model_surgery.ipynb).
    by_name = {str(x): x for x in sites}
    if cfg["direction_site"] and cfg["direction_site"] not in by_name:
        raise ValueError(f"direction_site: expected one of {sorted(by_name)}, got {cfg['direction_site']!r}")
    site = by_name[cfg["direction_site"]] if cfg["direction_site"] else best
    probe = BehaviorProbe(random_state=ctx.spec.seed).fit(feats[site], np.asarray(labels))
    summ = sweep.summary()
    acc = float(summ["mean"].max())
    rows = [{"method": "behaviour probe", "metric": f"held-out accuracy ({cfg['cv']}-fold), best layer",
             "value": acc, "control": "chance (majority class)",
             "control_value": max(np.mean(labels), 1 - np.mean(labels))}]
    data = {"best_site": str(best), "direction_site": str(site), "direction": probe.direction(1).tolist(),
            "sweep": summ.to_dict("list")}
    return StepOutput(rows, {"probe accuracy per layer": sweep.plot()}, data, value=probe)


def restore_probe(o: StepOutput):
    import torch

    return torch.tensor(o.data["direction"])


PROBE = Kind({"dataset": Field(str), "component": Field(str, "resid_post"),
              "pooling": Field(str, "mean", ("mean", "last")), "cv": Field(int, 5),
              "text": Field(str, "prompt", ("prompt", "text")),
              "label": Field(str, "label", help="'label' or a key of the examples' meta (builder datasets)"),
              "direction_site": Field(str, "", help="site whose probe gives the direction (default: best-reading)")},
             run_probe,
             restore=restore_probe)


# --- model surgery --------------------------------------------------------------------------
def run_surgery(ctx: Ctx, cfg: dict) -> StepOutput:
    from edits.surgery import ModelSurgery, alpha_for, direction_of, evaluate_surgery

    s = ctx.subject(cfg["subject"])
    probe = ctx.outputs[cfg["probe"]].value
    if cfg["scale"] < 0:
        raise ValueError(f"scale: expected a number > 0 (or 0 to use alpha), got {cfg['scale']}")
    # `scale` is alpha relative to the mean gate-row norm (as the notebook's grid chooses it): the
    # raw probe row's norm depends on the data the probe was trained on, so raw alpha does not transfer.
    alpha = alpha_for(s, direction_of(probe, 1), cfg["scale"]) if cfg["scale"] else cfg["alpha"]
    edit = ModelSurgery.fit(s, probe, n_rows=cfg["n_rows"], alpha=alpha)
    prompts = _prompts(ctx, cfg["dataset"], label=1)
    seeds = (0,) if ctx.reduced else tuple(range(cfg["control_seeds"]))
    ev = evaluate_surgery(s, edit, prompts, judge(cfg["judge"]), seeds=seeds, max_new_tokens=cfg["max_new_tokens"])
    f = ev.to_frame()
    rnd = float(f[f.condition == "random"].behaviour_rate.mean())
    rows = [{"method": "model surgery", "metric": f"{cfg['judge']} rate on trigger prompts",
             "before": ev.rate("base"), "value": ev.rate("surgery"), "control": f"random {cfg['n_rows']} rows",
             "control_value": rnd, "negative_alpha": ev.rate("negative alpha")}]
    report = edit.report(s)
    return StepOutput(rows, {"behaviour rate by condition": ev.plot(), "rows chosen per layer": report.plot()},
                      {"eval": f.to_dict("list")}, edit=edit)


SURGERY = Kind({"probe": Field(str), "dataset": Field(str), "n_rows": Field(int, 64), "alpha": Field(float, 1.0),
                "scale": Field(float, 0.0, help="alpha as a multiple of the mean gate-row norm; overrides alpha"),
                "judge": Field(str, "toxic", ("toxic", "refusal")), "control_seeds": Field(int, 3),
                "max_new_tokens": Field(int, 12)}, run_surgery, needs_steps=("probe",))

def _method_kinds() -> dict[str, Kind]:
    from apps import steps_methods as m

    return {"knob": Kind(m.KNOB, m.run_knob), "cmap": Kind(m.CMAP, m.run_cmap), "cge": Kind(m.CGE, m.run_cge),
            "experts": Kind(m.EXPERTS, m.run_experts)}


STEP_KINDS: dict[str, Kind] = {"probe": PROBE, "surgery": SURGERY, **_method_kinds()}


# --- evaluations ------------------------------------------------------------------------------
def ev_behaviour(ctx: Ctx, cfg: dict) -> StepOutput:
    from workbench.behaviour import evaluate_behaviour

    s = ctx.subject(cfg["subject"])
    prompts = _prompts(ctx, cfg["dataset"], label=cfg["label"] if cfg["label"] >= 0 else None)
    r = evaluate_behaviour(s, prompts, judge(cfg["judge"]), max_new_tokens=cfg["max_new_tokens"])
    return StepOutput(data={"value": r.rate})


def ev_task(ctx: Ctx, cfg: dict) -> StepOutput:
    from workbench.tasks import evaluate as ev

    s = ctx.subject(cfg["subject"])
    examples = ctx.dataset(cfg["dataset"])
    task = cfg["task"]
    if task == "facts":
        v = ev.fact_recall(s, examples)
    elif task == "entities":
        v = ev.entity_accuracy(s, examples)["accuracy"]
    elif task == "pair_acc":
        v = ev.pair_acc(s, examples)["pair_acc"]
    else:
        v = ev.benign_accuracy(s, [e for e in examples if int(e.label) == 0])
    return StepOutput(data={"value": float(v)})


def ev_perplexity(ctx: Ctx, cfg: dict) -> StepOutput:
    import torch

    from workbench.tasks.lm import token_logprobs

    s = ctx.subject(cfg["subject"])
    text = ctx.dataset(cfg["dataset"])
    lines = [ln for ln in (text.splitlines() if isinstance(text, str) else [e.prompt for e in text]) if ln.strip()]
    lps = torch.cat([lp.flatten() for lp in token_logprobs(s, lines)])
    return StepOutput(data={"value": float(math.exp(-lps.mean()))})


EVAL_KINDS: dict[str, Kind] = {
    "behaviour_rate": Kind({"dataset": Field(str), "judge": Field(str, "toxic", ("toxic", "refusal", "novel")),
                            "label": Field(int, 1, help="which labelled prompts to use; -1 for all"),
                            "max_new_tokens": Field(int, 12)}, ev_behaviour),
    "task": Kind({"dataset": Field(str), "task": Field(str, choices=("facts", "entities", "pair_acc", "benign"))},
                 ev_task),
    "perplexity": Kind({"dataset": Field(str)}, ev_perplexity),
}
