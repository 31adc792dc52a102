"""Pipeline step kinds for the pair methods: the knob, CMAP, CGE and MoTE expert switching.

Each runs the method as its notebook does, on a smaller budget, and returns rows that state
the effect next to its control (random directions, random circuits, plain sampling, random
experts).
"""

from __future__ import annotations

import numpy as np

from apps.pipeline import Ctx, StepOutput
from apps.spec import Field


def _pair(ctx: Ctx, cfg: dict):
    from workbench.models import ModelPair

    return ModelPair(ctx.subject(cfg["subject"]), ctx.subject(cfg["tuned"]))


# --- context knob -------------------------------------------------------------------------
def run_knob(ctx: Ctx, cfg: dict) -> StepOutput:
    from edits.steer import ProjectionSteer
    from probes.knob import fit_knob, intent_pairs, search_layers, steering_table

    s = ctx.subject(cfg["subject"])
    n = cfg["n_pairs"] // (2 if ctx.reduced else 1)
    train = intent_pairs(n, seed=ctx.spec.seed, split="train")
    val, test = intent_pairs(n // 2, seed=ctx.spec.seed + 1, split="eval").split((0.4, 0.6), seed=0)
    search = search_layers(s, val, tau=cfg["tau"], phi=0.05)
    knob = fit_knob(s, train, search.site, method="das", val=val, test=test, epochs=cfg["epochs"])
    subjects = [s] + [ctx.subject(t) for t in cfg["transfer_to"]]
    seeds = (0,) if ctx.reduced else (0, 1, 2)
    table = steering_table(subjects, {"das": knob}, val, test, random_seeds=seeds).to_frame()
    rows = []
    for subj in subjects:
        f = table[table.subject == subj.name]
        get = lambda c, f=f: float(f[f.condition == c].pair_acc.mean())  # noqa: E731
        rows.append({"method": "context knob (DAS)", "metric": f"PairAcc without intent, {subj.name}",
                     "before": get("no intent"), "value": get("steered: das"), "control": "random direction",
                     "control_value": get("steered: random"), "with_intent": get("with intent")})
    data = {"layers": list(search.layers), "site": str(search.site), "passes": search.n_patched_passes,
            "c_ctx": knob.c_ctx, "c_prior": knob.c_prior}
    edit = ProjectionSteer.from_knob(knob, cfg["apply"], model_id=s.identity()) if cfg["apply"] else None
    return StepOutput(rows, {"layer search": search.plot(), "knob projections": knob.plot()}, data, edit=edit)


KNOB = {"n_pairs": Field(int, 300), "tau": Field(float, 0.85), "epochs": Field(int, 2),
        "transfer_to": Field(list, []), "apply": Field(str, "", ("", "context", "prior"))}


# --- CMAP -----------------------------------------------------------------------------------
def run_cmap(ctx: Ctx, cfg: dict) -> StepOutput:
    from workbench.circuits import entity_batch, faithfulness
    from workbench.cmap import cmap
    from workbench.path_patching import ADJACENT_GROUPS, ENTITY_GROUPS, search_groups
    from workbench.tasks import entity_tracking

    pair = _pair(ctx, cfg)
    n = cfg["n"] // (2 if ctx.reduced else 1)
    k = cfg["n_objects"]
    ex = entity_tracking(n, seed=ctx.spec.seed, split="eval", n_objects=k)
    cor = entity_tracking(n, seed=ctx.spec.seed + 1, split="eval", n_objects=k)
    eb, ek = entity_batch(pair.base, ex), entity_batch(pair.base, cor)
    spec = ADJACENT_GROUPS if cfg["groups"] == "adjacent" else ENTITY_GROUPS
    search = search_groups(pair.base, list(eb.prompts), list(ek.prompts), eb.answers, eb.positions, threshold=0.01,
                           spec=spec, max_heads=cfg["max_heads"] or None)
    circuit = search.circuit()
    seeds = range(3 if ctx.reduced else 10)
    fb = faithfulness(pair.base, list(eb.prompts), eb.answers, circuit, eb.positions, seeds=seeds, chance=1 / k)
    res = cmap(pair, list(eb.prompts), eb.answers, circuit, eb.positions, variant="z")
    f = res.to_frame()
    groups = f[~f.patched.isin(["none (base)", "tuned alone"])]
    best = groups.loc[groups.recovery.idxmax()]
    rows = [{"method": "circuit faithfulness (base)", "metric": f"circuit acc / model acc ({circuit.size} heads)",
             "value": fb.faithfulness, "control": "random circuits, same size",
             "control_value": float(np.mean(fb.random_faithfulness))},
            {"method": "CMAP tuned -> base", "metric": f"accuracy, best group ({best.patched})",
             "before": res.base_accuracy, "value": float(best.accuracy), "control": "tuned model alone",
             "control_value": res.tuned_accuracy, "recovery": float(best.recovery)}]
    return StepOutput(rows, {"group search": search.plot(), "CMAP": res.plot()},
                      {"groups": {g: [list(h) for h in hs] for g, hs in circuit.groups.items()},
                       "cmap": f.to_dict("list")})


CMAP = {"tuned": Field(str, help="the tuned subject's name"), "n": Field(int, 64), "n_objects": Field(int, 4),
        "groups": Field(str, "adjacent", ("adjacent", "paper"),
                        help="group search: the organisms' adjacent format or the paper's object-first one"),
        "max_heads": Field(int, 4, help="heads kept per group (0: no cap, only the 1 % rule)")}


# --- CGE ---------------------------------------------------------------------------------------
def run_cge(ctx: Ctx, cfg: dict) -> StepOutput:
    from workbench.contrast_eval import exploration_eval
    from workbench.tasks import NOVEL_DOMAINS, novel_domain

    pair = _pair(ctx, cfg)
    seeds = (0,) if ctx.reduced else (0, 1, 2)
    ev = exploration_eval(pair, novel_domain, domains=list(NOVEL_DOMAINS), n=cfg["n"], seeds=seeds,
                          methods=("cge", "iterative_cge", "tuned_sampling"), max_new_tokens=cfg["max_new_tokens"])
    s = ev.summary().set_index("method")
    rows = [{"method": "CGE", "metric": "detection rate of novel content", "value": float(s.loc["cge", "detection_rate_mean"]),
             "control": "plain sampling from tuned", "control_value": float(s.loc["tuned_sampling", "detection_rate_mean"])},
            {"method": "iterative CGE", "metric": f"domain coverage after {cfg['n']}",
             "value": float(s.loc["iterative_cge", "coverage_mean"]), "control": "static CGE",
             "control_value": float(s.loc["cge", "coverage_mean"])}]
    return StepOutput(rows, {"novelty exploration": ev.plot()}, {"summary": ev.summary().to_dict("list")})


CGE = {"tuned": Field(str), "n": Field(int, 20), "max_new_tokens": Field(int, 24)}


# --- MoTE ---------------------------------------------------------------------------------------
def run_experts(ctx: Ctx, cfg: dict) -> StepOutput:
    from edits.experts import SwitchExperts, ftri, switch_curve
    from workbench.behaviour import evaluate_behaviour
    from workbench.tasks import is_refusal, refusal

    s = ctx.subject(cfg["subject"])
    n = cfg["n"] // (2 if ctx.reduced else 1)
    train = refusal(n, seed=ctx.spec.seed, split="train")
    held = refusal(n, seed=ctx.spec.seed + 1, split="eval")
    sens = [e.prompt for e in train if e.label == 1]
    benign = [e.prompt for e in train if e.label == 0]
    scores = ftri(s, sens, benign, statistic=cfg["statistic"])
    top = scores.top(max(cfg["ks"]))
    held_sens = [e.prompt for e in held if e.label == 1]

    def measure(subject):
        return {"refusal_rate": evaluate_behaviour(subject, held_sens, is_refusal, max_new_tokens=6).rate}

    curve = switch_curve(s, top, [0, *cfg["ks"]], measure, n_random=2 if ctx.reduced else 5, seed=ctx.spec.seed)
    sm = curve.summary().set_index("k")
    k = cfg["apply_k"]
    rows = [{"method": "MoTE switch-off", "metric": f"refusal rate, top-{kk} experts off",
             "before": float(sm.loc[0, "top_refusal_rate"]), "value": float(sm.loc[kk, "top_refusal_rate"]),
             "control": f"{kk} random experts off", "control_value": float(sm.loc[kk, "random_mean_refusal_rate"])}
            for kk in cfg["ks"]]
    edit = SwitchExperts(off=top[:k], model_id=s.identity()) if k else None
    return StepOutput(rows, {"fTRI scores": scores.plot(), "refusal vs k": curve.plot()},
                      {"top": [list(p) for p in top], "curve": curve.to_frame().astype(str).to_dict("list")}, edit=edit)


EXPERTS = {"n": Field(int, 200), "statistic": Field(str, "count", ("count", "weight")), "ks": Field(list, [1, 2, 4]),
           "apply_k": Field(int, 0, help="switch this many top experts off for the evaluations after")}
