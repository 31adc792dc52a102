"""Cached analysis calls for the pages (`st.cache_data`, keyed by the pair key and the arguments).

Arguments starting with `_` (the pair itself) are not hashed: `key` identifies the pair. Every
function here is a direct call of a library function; nothing is computed in the app itself.
"""

from __future__ import annotations

import streamlit as st
import torch

METRICS = {"answer log-prob (last token)": "last", "mean log-prob (all tokens)": "all"}


def mean_logprob(subject, texts, which: str = "last") -> float:
    """Mean log-probability under `subject` of each text's last token given the rest ("last": the
    answer of a task prompt) or of every next token ("all")."""
    if which not in ("last", "all"):
        raise ValueError(f"which: expected 'last' or 'all', got {which!r}")
    x = subject.tokenize(list(texts))  # left padded: position -1 is every row's last token
    with torch.no_grad():
        lp = torch.log_softmax(subject.forward(x)[:, :-1].double(), -1)
    lp = lp.gather(-1, x.input_ids[:, 1:, None])[..., 0]
    if which == "last":
        return float(lp[:, -1].mean())
    m = x.attention_mask[:, 1:] * x.attention_mask[:, :-1]  # both the token and its context are real
    return float((lp * m).sum() / m.sum().clamp(min=1))


@st.cache_data(show_spinner="Diffing weights...", max_entries=8)
def weight_diff(key: str, _pair):
    from workbench.diff import weight_diff as f

    return f(_pair, progress=False)


@st.cache_data(show_spinner="DARE: dropping parts of the delta...", max_entries=8)
def dare(key: str, _pair, prompts: tuple[str, ...], ps: tuple[float, ...], seeds: tuple[int, ...], which: str = "last"):
    from workbench.diff import dare_check

    return dare_check(_pair, lambda s: mean_logprob(s, prompts, which), ps=ps, seeds=seeds, progress=False)


@st.cache_data(show_spinner="Grafting the most changed entries...", max_entries=8)
def graft(key: str, _pair, prompts: tuple[str, ...], fractions: tuple[float, ...], seeds: tuple[int, ...],
          which: str = "last"):
    from edits.graft import graft_curve

    return graft_curve(_pair, lambda s: mean_logprob(s, prompts, which), fractions=fractions, seeds=seeds)


@st.cache_data(show_spinner="Comparing activations...", max_entries=8)
def activation_diff(key: str, _pair, prompts: tuple[str, ...]):
    from workbench.diff import activation_diff as f

    return f(_pair, list(prompts), progress=False)


@st.cache_data(show_spinner="Logit lens...", max_entries=16)
def logit_lens(key: str, _pair, text: str, k: int = 5):
    from workbench.diff import logit_lens as f

    return f(_pair, text, k=k)


@st.cache_data(show_spinner="Diff lens...", max_entries=8)
def diff_lens(key: str, _pair, prompts: tuple[str, ...], k: int = 8):
    from workbench.diff import diff_lens as f

    return f(_pair, list(prompts), k=k, progress=False)


# --- probes and knob ------------------------------------------------------------------------------
def labelled(task: str, n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """(prompts, 0/1 labels) of a behaviour task: 1 = the undesired class."""
    from workbench import tasks

    if task == "behaviour":
        ex = tasks.behaviour(n, seed=seed, split="eval", toxic_share=0.5)
    elif task == "refusal":
        ex = tasks.refusal(n, seed=seed, split="eval")
    else:
        raise ValueError(f"task: expected 'behaviour' or 'refusal', got {task!r}")
    return [e.prompt for e in ex], [int(e.label) for e in ex]


@st.cache_data(show_spinner="Probing every layer of both models...", max_entries=8)
def probe_sweeps(key: str, _pair, task: str, n: int, cv: int):
    from probes.linear import probe_sweep

    texts, labels = labelled(task, n)
    return {role: probe_sweep(s, texts, labels, s.sites("resid_post"), cv=cv)
            for role, s in (("base", _pair.base), ("tuned", _pair.tuned))}


@st.cache_data(show_spinner="Fitting the knob...", max_entries=8)
def knob(key: str, _pair, layer: int, method: str, n: int, keep: str):
    from probes.knob import fit_knob, intent_pairs, separation
    from workbench.sites import Site

    pairs = intent_pairs(n, split="eval")
    k = fit_knob(_pair.tuned, pairs, Site(layer, "resid_post"), method=method, keep=keep)
    return k, {"base": separation(k, _pair.base, pairs), "tuned": separation(k, _pair.tuned, pairs)}, pairs.prompt_bare[:8]


# --- circuits -------------------------------------------------------------------------------------
def entity_examples(n: int, n_objects: int, seed: int = 0, fmt: str | None = None):
    from workbench import tasks

    kw = {} if fmt is None else {"fmt": fmt}
    return tasks.entity_tracking(n, seed=seed, split="eval", n_objects=n_objects, **kw)


def entity_batch(subject, n: int, n_objects: int):
    """Episodes in the task's default format if `workbench.circuits.entity_batch` can read its key
    positions, else in the object-first format of Prakash et al. (label at position -3)."""
    from workbench.circuits import entity_batch as f

    try:
        return f(subject, entity_examples(n, n_objects))
    except ValueError:
        return f(subject, entity_examples(n, n_objects, fmt="object_first"))


@st.cache_data(show_spinner="Activation patching...", max_entries=8)
def patching(key: str, _pair, n: int, n_objects: int, component: str):
    from workbench.patching import ProbCorrect, activation_patching

    batch = entity_batch(_pair.base, n, n_objects)
    prompts = list(batch.prompts)
    corrupt = prompts[1:] + prompts[:1]  # another episode of the same length: a different answer
    out = {}
    for role, s in (("base", _pair.base), ("tuned", _pair.tuned)):
        out[role] = activation_patching(s, prompts, corrupt, ProbCorrect(batch.answers), component=component,
                                        by_head=False, progress=False)
    return out


@st.cache_data(show_spinner="Cross-model activation patching...", max_entries=8)
def cmap_layers(key: str, _pair, n: int, n_objects: int, component: str):
    from workbench.cmap import cmap_layers as f

    batch = entity_batch(_pair.base, n, n_objects)
    return f(_pair, list(batch.prompts), batch.answers, component=component)


@st.cache_data(show_spinner="CMAP for the picked heads...", max_entries=8)
def cmap_heads(key: str, _pair, n: int, n_objects: int, groups: tuple[tuple[str, tuple[tuple[int, int], ...], str], ...]):
    from workbench.circuits import Circuit
    from workbench.cmap import cmap

    batch = entity_batch(_pair.base, n, n_objects)
    circuit = Circuit(groups={g: heads for g, heads, _ in groups}, positions={g: pos for g, _, pos in groups})
    return cmap(_pair, list(batch.prompts), batch.answers, circuit, batch.positions)


# --- novelty --------------------------------------------------------------------------------------
@st.cache_data(show_spinner="Contrastive generation...", max_entries=8)
def cge(key: str, _pair, n: int, max_new_tokens: int, alpha: float, gamma: float, seed: int):
    from workbench.contrast import contrastive_generate

    return contrastive_generate(_pair, n=n, max_new_tokens=max_new_tokens, alpha=alpha, gamma=gamma, seed=seed)


@st.cache_data(show_spinner="Plain sampling from the tuned model (the control)...", max_entries=8)
def plain(key: str, _pair, n: int, max_new_tokens: int, seed: int):
    from workbench.contrast import novelty_scores
    from workbench.contrast_eval import plain_sample

    texts = [t if t.strip() else "." for t in plain_sample(_pair.tuned, n=n, max_new_tokens=max_new_tokens, seed=seed)]
    return novelty_scores(_pair, texts)


@st.cache_data(show_spinner="Iterative CGE (one gradient step on a base copy per example)...", max_entries=4)
def icge(key: str, _pair, n: int, max_new_tokens: int, lr: float, seed: int):
    from workbench.contrast import iterative_cge

    return iterative_cge(_pair, n=n, lr=lr, max_new_tokens=max_new_tokens, seed=seed, progress=False)


# --- experts --------------------------------------------------------------------------------------
@st.cache_data(show_spinner="fTRI: routing maps of behaviour vs control prompts...", max_entries=8)
def ftri(key: str, _subject, n: int, statistic: str, grouped: bool):
    from edits.experts import ftri as f
    from workbench import tasks

    ex = tasks.refusal(2 * n, seed=0, split="eval")
    sens = [e.prompt for e in ex if int(e.label) == 1][:n]
    benign = [e.prompt for e in ex if int(e.label) == 0][:n]
    return f(_subject, sens, benign, statistic=statistic, group_by=tasks.is_refusal if grouped else None,
             progress=False)


# --- edits ----------------------------------------------------------------------------------------
BEHAVIOURS = {"toxic continuations": "behaviour", "refusals": "refusal"}


def judge_for(task: str):
    from workbench import tasks

    return tasks.is_toxic if task == "behaviour" else tasks.is_refusal


def capability(subject, n: int = 40) -> float:
    """Fact recall on held-out facts: the capability an edit must keep."""
    from workbench import tasks
    from workbench.tasks.evaluate import fact_recall

    return float(fact_recall(subject, tasks.facts(n, seed=0, split="eval")))


@st.cache_data(show_spinner="Fitting the probe and selecting gate rows...", max_entries=8)
def fit_surgery(key: str, _subject, task: str, n: int, n_rows: int, alpha: float):
    from edits.surgery import ModelSurgery
    from probes.linear import BehaviorProbe, collect_features
    from workbench.sites import Site

    texts, labels = labelled(task, n)
    site = Site(_subject.arch.n_layers - 1, "resid_post")
    X = collect_features(_subject, texts, site)[site]
    probe = BehaviorProbe(epochs=30, lr=1e-2).fit(X, labels)
    return ModelSurgery.fit(_subject, probe, n_rows=n_rows, alpha=alpha)


@st.cache_data(show_spinner="Evaluating the edit against random-row controls...", max_entries=8)
def eval_surgery(key: str, _subject, _edit, edit_key: str, task: str, n: int):
    from edits.surgery import evaluate_surgery
    from workbench import tasks

    ex = (tasks.behaviour(n, seed=1, split="eval", toxic_share=1.0) if task == "behaviour"
          else [e for e in tasks.refusal(2 * n, seed=1, split="eval") if int(e.label) == 1][:n])
    return evaluate_surgery(_subject, _edit, [e.prompt for e in ex], judge_for(task),
                            tasks={"fact recall": capability}, seeds=(0, 1), max_new_tokens=12)


def behaviour_rate(subject, task: str, n: int) -> float:
    from workbench import tasks
    from workbench.tasks.evaluate import refusal_rate, toxic_rate

    if task == "behaviour":
        return float(toxic_rate(subject, [e.prompt for e in tasks.behaviour(n, seed=1, split="eval", toxic_share=1.0)],
                                max_new_tokens=12))
    sens = [e.prompt for e in tasks.refusal(2 * n, seed=1, split="eval") if int(e.label) == 1][:n]
    return float(refusal_rate(subject, sens))


def before_after(subject, edit, task: str, n: int, controls=()) -> list[dict]:
    """Behaviour rate and capability without the edit, with it, and with each control edit."""
    rows = [{"condition": "no edit", "behaviour rate": behaviour_rate(subject, task, n),
             "fact recall": capability(subject)}]
    for name, e in [("edit", edit), *controls]:
        with e.applied(subject):
            rows.append({"condition": name, "behaviour rate": behaviour_rate(subject, task, n),
                         "fact recall": capability(subject)})
    return rows


def edit_zip(edit) -> bytes:
    """The edit's own files (edit.json + delta.safetensors), zipped for download."""
    import io
    import tempfile
    import zipfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = edit.save(Path(d) / edit.method)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for f in sorted(p.iterdir()):
                z.write(f, f"{edit.method}/{f.name}")
        return buf.getvalue()
