"""The batched all-layers probe fit solves scikit-learn's LogisticRegression objective."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from probes.batched import cv_accuracy_batched, fit_logistic_batched, fit_logistic_folds, predict_batched


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


def _objective(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray, C: float) -> tuple[float, float]:
    """scikit-learn's objective (sum of log-losses + ||w||^2 / 2C) and max |gradient of its mean|, float64."""
    X = X.astype(np.float64)
    z = X @ w + b
    p = 1 / (1 + np.exp(-z))
    g = np.r_[X.T @ (p - y) + w / C, (p - y).sum()] / len(y)
    return float(np.sum(np.logaddexp(0, z) - y * z) + w @ w / (2 * C)), float(np.abs(g).max())


def test_lbfgs_folds_match_sklearn_coefficients():
    """The all-layers x folds L-BFGS solves each fold's scikit-learn problem (same C, same optimum)."""
    X, y = _data(seed=3)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y.numpy()))
    coef, icpt = fit_logistic_folds(X, y, folds, C=0.5, tol=1e-6)
    assert coef.shape == (X.shape[0], len(folds), X.shape[2]) and icpt.shape == (X.shape[0], len(folds))
    for layer in range(X.shape[0]):
        for j, (tr, _) in enumerate(folds):
            m = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit(X[layer, tr].numpy(), y[tr].numpy())
            np.testing.assert_allclose(coef[layer, j].numpy(), m.coef_[0], atol=2e-3)
            assert abs(icpt[layer, j].item() - m.intercept_[0]) < 2e-3


def test_lbfgs_meets_sklearn_stopping_test_on_separable_offset_data(monkeypatch):
    """Separable features far from the origin (as mean-pooled hidden states are) in layer 0, noise
    in layer 1: layer 0's curvature at the solution is far below w = 0's, the case the
    preconditioner is re-formed for. Every fold must pass scikit-learn's gradient test and reach
    an objective no worse than scikit-learn's."""
    import probes.batched as pb

    formed = []
    orig = pb._precond_inv
    monkeypatch.setattr(pb, "_precond_inv", lambda *a: formed.append(1) or orig(*a))
    g = torch.Generator().manual_seed(4)
    X = torch.randn(2, 400, 24, generator=g) + 5 * torch.randn(24, generator=g)
    y = (X[0, :, :3].sum(-1) > X[0, :, :3].sum(-1).median()).long()
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(np.zeros(len(y)), y.numpy()))
    coef, icpt = fit_logistic_folds(X, y, folds, tol=1e-4)
    assert len(formed) >= 2  # the refresh ran
    for layer in range(X.shape[0]):
        for j, (tr, _) in enumerate(folds):
            Xl, yl = X[layer, tr].numpy(), y[tr].numpy()
            ours, grad = _objective(coef[layer, j].double().numpy(), icpt[layer, j].item(), Xl, yl, 1.0)
            assert grad <= 1e-4 * 1.01
            m = LogisticRegression(max_iter=5000).fit(Xl, yl)
            theirs, _ = _objective(m.coef_[0].astype(np.float64), float(m.intercept_[0]), Xl, yl, 1.0)
            assert ours <= theirs + 1e-3 * abs(theirs)


def test_cv_solvers_agree():
    X, y = _data(seed=5)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=2).split(np.zeros(len(y)), y.numpy()))
    a = cv_accuracy_batched(X, y, folds)
    b = cv_accuracy_batched(X, y, folds, solver="newton")
    assert (a - b).abs().max() <= 1 / 60 + 1e-9
    with pytest.raises(ValueError, match="solver"):
        cv_accuracy_batched(X, y, folds, solver="sgd")


def test_lbfgs_warns_when_max_iter_stops_it():
    X, y = _data(seed=6)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(len(y)), y.numpy()))
    with pytest.warns(RuntimeWarning, match="max_iter"):
        fit_logistic_folds(X, y, folds, max_iter=1, tol=1e-9)
