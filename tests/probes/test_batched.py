"""The batched all-layers probe fit solves scikit-learn's LogisticRegression objective."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from probes.batched import cv_accuracy_batched, fit_logistic_batched, predict_batched


def _data(L=3, n=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(L, n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = ((X[0] @ w + 2.0 * torch.randn(n, generator=g)) > 0).long()
    return X, y


def test_matches_sklearn_coefficients_per_layer():
    X, y = _data()
    coef, icpt = fit_logistic_batched(X, y, C=0.5)
    for layer in range(X.shape[0]):
        m = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit(X[layer].numpy(), y.numpy())
        np.testing.assert_allclose(coef[layer].numpy(), m.coef_[0], atol=2e-3)
        assert abs(icpt[layer].item() - m.intercept_[0]) < 2e-3
        agree = (predict_batched(X, coef, icpt)[layer].numpy() == m.predict(X[layer].numpy())).mean()
        assert agree >= 0.995


def test_cv_accuracy_matches_sklearn_loop():
    X, y = _data(seed=1)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y.numpy()))
    ours = cv_accuracy_batched(X, y, folds).numpy()
    for layer in range(X.shape[0]):
        for j, (tr, te) in enumerate(folds):
            m = LogisticRegression(max_iter=5000).fit(X[layer, tr].numpy(), y[tr].numpy())
            assert abs(ours[layer, j] - (m.predict(X[layer, te].numpy()) == y[te].numpy()).mean()) <= 1 / len(te) + 1e-9
    # the signal lives in layer 0 only: the probe finds it there and nowhere else
    assert ours[0].mean() > 0.75 and ours[1:].mean() < 0.65


def test_bad_input():
    X, y = _data()
    with pytest.raises(ValueError, match="X"):
        fit_logistic_batched(X[0], y)
    with pytest.raises(ValueError, match="y"):
        fit_logistic_batched(X, y[:-1])
    with pytest.raises(ValueError, match="C"):
        fit_logistic_batched(X, y, C=0)


def test_cv_folds_equal_separate_fits_from_scratch():
    """Folds warm-started with the downdated full-data Hessian reach the per-fold solutions."""
    X, y = _data(seed=2)
    n = len(y)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=1).split(np.zeros(n), y.numpy()))
    folds.append((np.arange(0, n // 2), np.arange(n // 2, n // 2 + 50)))  # rows in neither part
    ours = cv_accuracy_batched(X, y, folds)
    for j, (tr, te) in enumerate(folds):
        c, b = fit_logistic_batched(X[:, tr], y[tr])
        want = (predict_batched(X[:, te], c, b) == y[te]).float().mean(1)
        assert (ours[:, j] - want).abs().max() <= 1 / len(te) + 1e-9
    assert ours[0].mean() > 0.75
