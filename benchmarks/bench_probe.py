"""Probe sweep over all layers: the workbench's batched fits vs a scikit-learn
`LogisticRegression` loop per layer and fold, on the same features and folds. The default
solver (preconditioned L-BFGS over all layers x folds at once) is the row with the target; the
former batched Newton (all layers at once, folds warm-started) is reported beside it, timed in
the same run. Reports held-out accuracy gaps to scikit-learn and the time ratios."""

from __future__ import annotations

import numpy as np
import torch
from common import QUICK, THREADS, large_llama, median_time, organism, random_texts, row, timed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

import workbench as wb
from probes.batched import cv_accuracy_batched
from probes.linear import collect_features


def _sklearn_sweep(X: np.ndarray, y: np.ndarray, folds) -> np.ndarray:
    acc = np.zeros((X.shape[0], len(folds)))
    with threadpool_limits(THREADS):  # the same thread count as torch
        for layer in range(X.shape[0]):
            for j, (tr, te) in enumerate(folds):
                m = LogisticRegression(max_iter=1000).fit(X[layer, tr], y[tr])
                acc[layer, j] = (m.predict(X[layer, te]) == y[te]).mean()
    return acc


def _data(label: str, path, n: int):
    s = wb.load(path)
    if label.startswith("organism"):
        from workbench import tasks

        ex = tasks.behaviour(n, seed=3, split="eval")
        texts, y = [e.prompt for e in ex], np.array([e.label for e in ex])
    else:  # a random model: label = whether the text contains a marker word (a linear feature)
        texts = random_texts(n, seed=1)
        y = np.array([int(" w7 " in f" {t} ") for t in texts])
        texts = [t + (" w7" if i % 2 else "") for i, t in enumerate(texts)]
        y = np.array([i % 2 for i in range(n)])
    sites = s.sites("resid_post")
    feats = collect_features(s, texts, sites, "mean")
    X = np.stack([feats[x] for x in sites]).astype(np.float32)
    return X, y


def main() -> list[dict]:
    n = 400 if QUICK else 2000
    rows = []
    models = [("large-llama-8x512", large_llama())]
    if organism("base") is not None:
        models.insert(0, ("organism:base", organism("base")))
    for label, path in models:
        X, y = _data(label, path, n)
        folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
        # scikit-learn takes ~1.3-2.5 s per sweep on the larger model (one thread): time the runs
        # that give its accuracy.
        base_t, sk_acc = timed(lambda X=X, y=y, folds=folds: _sklearn_sweep(X, y, folds), 3)
        for solver, name in (("lbfgs", "batched L-BFGS (layers x folds)"), ("newton", "batched Newton (former)")):
            ours_acc = cv_accuracy_batched(Xt, yt, folds, solver=solver).numpy()
            ours_t = median_time(lambda solver=solver: cv_accuracy_batched(Xt, yt, folds, solver=solver), repeats=5)
            gap = float(np.abs(sk_acc.mean(1) - ours_acc.mean(1)).max())
            target = solver == "lbfgs"
            rows.append(row("probe sweep (5-fold, all layers)", label, "sklearn LogisticRegression loop", base_t,
                            name, ours_t, ">= 5x faster, acc within 1 pt" if target else "reported",
                            (base_t / ours_t >= 5 and gap <= 0.01) if target else None,
                            speedup=round(base_t / ours_t, 2), max_acc_gap=round(gap, 4), layers=X.shape[0], n=n,
                            d=X.shape[2]))
    return rows


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(main()).to_string(index=False))
