"""Logistic-regression probes for every layer at once, in torch.

A probe sweep fits one small linear classifier per layer and cross-validation fold. Looping
scikit-learn over them pays Python and solver overhead L x k times; here all of them are one
batched problem. The objective is scikit-learn's `LogisticRegression` (L2 penalty
`1/(2C) ||w||^2`, intercept unpenalised) with its stopping test, so the solutions agree with it
to solver tolerance (tests check this). Two solvers:

- `fit_logistic_batched`: Newton (IRLS), all layers at once; forms `d x d` Hessians.
- `fit_logistic_folds` / `cv_accuracy_batched` (default `solver="lbfgs"`): preconditioned
  L-BFGS on all layers x folds at once. No Hessian per fold or step: one `X^T X` per layer
  (the Hessian at w = 0) is the preconditioner, and each iteration reads the features twice
  (one product for the search direction's logits, one for the gradient) for every fold at
  once. The line search (a few safeguarded Newton steps on the step length) costs no pass
  over X: the logits are linear in the step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor


def _design(X: Tensor) -> tuple[Tensor, Tensor]:
    """(`layer batch d+1` with an intercept column, its `layer d+1 batch` transpose), float32."""
    X = X.float()
    Xa = torch.cat([X, X.new_ones(*X.shape[:2], 1)], -1)
    return Xa, Xa.transpose(1, 2).contiguous()


def _reg(d: int, C: float) -> Tensor:
    reg = torch.full((d + 1,), 1.0 / C)
    reg[-1] = 0.0  # the intercept is not penalised (as in scikit-learn)
    return reg


def _newton(Xa: Tensor, Xt: Tensor, yv: Tensor, reg: Tensor, w: Tensor, *, max_iter: int, tol: float,
            keep: Tensor | None = None, lu: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Newton (IRLS) on all layers at once, on the rows where `keep` is 1 (all by default).

    Stops on scikit-learn's test of the mean-loss gradient (`max |grad| <= tol * rows`). The
    Hessian (the one costly product, `X^T S X`) is reused while the gradient at least halves
    per step, and recomputed at the current point when it does not, so far from the solution
    these are Newton steps and near it most steps cost only a gradient. `lu` is a
    factorised starting Hessian (else one is formed at `w`). Matmuls are float32; the solves
    are float64, the precision that matters (~2x faster than float64 throughout).
    """
    n = Xa.shape[1] if keep is None else float(keep.sum())
    ridge = torch.diag(reg + 1e-10)
    last = math.inf
    for _ in range(max_iter):
        p = torch.sigmoid(torch.bmm(Xa, w.unsqueeze(-1)).squeeze(-1))
        r = p - yv if keep is None else (p - yv) * keep
        grad = torch.bmm(Xt, r.unsqueeze(-1)).squeeze(-1) + reg * w
        g = float(grad.abs().max())
        if g <= tol * n:
            break
        if lu is None or g > last / 2:
            s = (p * (1 - p)).clamp(min=1e-10)
            s = s if keep is None else s * keep
            factors, pivots = torch.linalg.lu_factor((torch.bmm(Xt * s.unsqueeze(1), Xa) + ridge).double())
        else:
            factors, pivots = lu
        lu, last = (factors, pivots), g
        w = w - torch.linalg.lu_solve(factors, pivots, grad.double().unsqueeze(-1)).squeeze(-1).float()
    return w


def _check(X: Tensor, y: Tensor, C: float) -> None:
    if X.ndim != 3:
        raise ValueError(f"X: expected `layer batch d`, got shape {tuple(X.shape)}")
    if y.ndim != 1 or y.shape[0] != X.shape[1]:
        raise ValueError(f"y: expected {X.shape[1]} labels, got shape {tuple(y.shape)}")
    if C <= 0:
        raise ValueError(f"C: expected > 0, got {C}")


@torch.no_grad()
def fit_logistic_batched(X: Tensor, y: Tensor, *, C: float = 1.0, max_iter: int = 30, tol: float = 1e-4,
                         init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """X: `layer batch d`, y: `batch` in {0, 1}. Returns (coef `layer d`, intercept `layer`).

    `init` (`layer d+1`, coef then intercept) warm-starts Newton, e.g. from the full-data fit
    when fitting cross-validation folds that share most of their rows.
    """
    _check(X, y, C)
    Xa, Xt = _design(X)
    L, _, d = X.shape
    w = torch.zeros(L, d + 1) if init is None else init.clone().float()
    w = _newton(Xa, Xt, y.float(), _reg(d, C), w, max_iter=max_iter, tol=tol)
    return w[:, :-1].clone(), w[:, -1].clone()


def predict_batched(X: Tensor, coef: Tensor, intercept: Tensor) -> Tensor:
    """`layer batch` predicted labels in {0, 1}."""
    return (torch.einsum("lnd,ld->ln", X.float(), coef) + intercept[:, None] > 0).long()


def _folds_mask(folds: Sequence[tuple], n: int) -> tuple[Tensor, Tensor]:
    """(`fold n` float64 mask of each fold's training rows, `fold n` bool mask of its held-out rows)."""
    train = torch.zeros(len(folds), n, dtype=torch.float64)
    test = torch.zeros(len(folds), n, dtype=torch.bool)
    for j, (tr, te) in enumerate(folds):
        train[j, torch.as_tensor(tr, dtype=torch.long)] = 1.0
        test[j, torch.as_tensor(te, dtype=torch.long)] = True
    return train, test


def _precond_inv(X: Tensor, s: Tensor | None, reg: Tensor, scale: float) -> Tensor:
    """Per layer, the inverse of `scale * [X 1]^T diag(s) [X 1] + diag(reg)` (s = 1 if None), float32.

    With `s = 1/4` this is the logistic Hessian at w = 0. The product is float32 (the one
    O(n d^2) step, done without copying X into an intercept-augmented matrix); the factorisation
    and inverse are float64.
    """
    L, n, d = X.shape
    Xs = X if s is None else X * s.unsqueeze(-1)
    P = torch.empty(L, d + 1, d + 1, dtype=torch.float64)
    P[:, :d, :d] = torch.bmm(Xs.transpose(1, 2), X)
    c = Xs.sum(1).double()
    P[:, :d, d] = c
    P[:, d, :d] = c
    P[:, d, d] = float(n) if s is None else s.double().sum(1)
    P = P * scale + torch.diag(reg + 1e-8)
    return torch.cholesky_inverse(torch.linalg.cholesky(P)).float()


def _line_search(z: Tensor, zd: Tensor, yv: Tensor, train: Tensor, wd: Tensor, dd: Tensor, steps: int = 3) -> Tensor:
    """Step `a` (`layer fold`) minimising the objective along each search direction.

    The logits along the direction are `z + a zd`, so the 1-D loss, its slope and curvature
    need no pass over X. Safeguarded Newton on the slope (the loss is convex in `a`): a step
    outside the bracket [slope < 0, slope > 0] bisects, or doubles while no upper end is known.
    `wd`, `dd` are the penalty terms `sum reg w d`, `sum reg d d`.
    """
    a = torch.ones_like(wd)
    lo, hi = torch.zeros_like(a), torch.full_like(a, math.inf)
    tz = train * zd
    for _ in range(steps):
        p = torch.sigmoid(torch.addcmul(z, a.unsqueeze(-1), zd))
        d1 = ((p - yv) * tz).sum(-1) + wd + a * dd
        d2 = (p * (1 - p) * tz * zd).sum(-1) + dd
        up = d1 > 0
        hi = torch.where(up, torch.minimum(hi, a), hi)
        lo = torch.where(up, lo, torch.maximum(lo, a))
        step = a - d1 / d2.clamp(min=1e-300)
        bad = (step <= lo) | (step >= hi) | ~torch.isfinite(step)
        a = torch.where(bad, torch.where(torch.isfinite(hi), (lo + hi) / 2, 2 * torch.maximum(lo, a)), step)
    return a


def _lbfgs_folds(X: Tensor, yv: Tensor, train: Tensor, reg: Tensor, *, tol: float, max_iter: int, memory: int = 10,
                 refresh: int = 20) -> tuple[Tensor, Tensor]:
    """Preconditioned L-BFGS for every layer x fold: returns (w `layer fold d+1`, logits `layer fold n`).

    `X` float32 `layer n d`; `train` `fold n` (1 on a fold's training rows). The initial
    inverse Hessian is the inverse of the Hessian at w = 0 (`X^T X / 4` over a fold's share of
    the rows, plus the penalty), scaled each step by `s'y / y'P^-1 y`. The preconditioner is
    re-formed with the current curvature weights `p (1 - p)` (per row, averaged over folds) and
    the memory restarted when, in any layer, their mean over the folds' training rows has moved
    by more than 2x from the one it was formed with (or after `refresh` steps). On (near-)separable data, e.g.
    mean-pooled features far from the origin, the solution's curvature is ~100x below w = 0's
    and this is what keeps the iteration count low; where it stays near 1/4 (8 x d512 random
    features) the one `X^T X` is all. Problems stop on scikit-learn's test
    `max |grad of the mean loss| <= tol` and are frozen; the search for all of them stops
    when, after recomputing the logits from w (the iterations update them incrementally),
    every problem passes. Products with X are float32, everything else float64.
    """
    L, n, d = X.shape
    F = train.shape[0]
    XT = X.transpose(1, 2)
    ntr = train.sum(-1)
    frac = float(ntr.mean()) / n

    def logits(v: Tensor) -> Tensor:  # `L F d+1` -> `L F n`
        return torch.bmm(v[..., :d].float(), XT).double() + v[..., d:]

    def gradient(z: Tensor, v: Tensor) -> Tensor:
        r = (torch.sigmoid(z) - yv) * train
        return torch.cat([torch.bmm(r.float(), X).double(), r.sum(-1, keepdim=True)], -1) + reg * v

    pinv = _precond_inv(X, None, reg, frac / 4)

    def precond(v: Tensor) -> Tensor:
        return torch.bmm(v.float(), pinv).double()

    w = torch.zeros(L, F, d + 1, dtype=torch.float64)
    z = logits(w)
    g = gradient(z, w)
    S: list[Tensor] = []
    Y: list[Tensor] = []
    rho: list[Tensor] = []
    it = since = 0
    ref = torch.full((L,), 0.25, dtype=torch.float64)  # the mean curvature weights the preconditioner was formed with
    fresh = False
    while True:
        done = g.abs().amax(-1) <= tol * ntr
        if bool(done.all()):
            if fresh:
                break
            z = logits(w)  # the final check, without the drift of the incremental logits
            g = gradient(z, w)
            fresh = True
            continue
        fresh = False
        if it >= max_iter:
            warnings.warn(f"L-BFGS stopped at max_iter={max_iter} with {int((~done).sum())} of {done.numel()} "
                          "layer x fold problems above the gradient tolerance", RuntimeWarning, stacklevel=3)
            break
        it += 1
        since += 1
        p = torch.sigmoid(z)
        curv = p * (1 - p)
        now = ((curv * train).sum(-1) / ntr).mean(1)  # per layer
        if since > refresh or (since > 1 and bool(((now < ref / 2) | (now > 2 * ref)).any())):
            pinv = _precond_inv(X, curv.mean(1).float(), reg, frac)
            S, Y, rho, since, ref = [], [], [], 1, now
        q = -g
        alphas = []
        for s, yk, r in zip(reversed(S), reversed(Y), reversed(rho), strict=True):
            a = r * (s * q).sum(-1, keepdim=True)
            alphas.append(a)
            q = q - a * yk
        q = precond(q)
        if S:
            sy = (S[-1] * Y[-1]).sum(-1, keepdim=True)
            q = q * (sy / (Y[-1] * precond(Y[-1])).sum(-1, keepdim=True).clamp(min=1e-300))
        for s, yk, r, a in zip(S, Y, rho, reversed(alphas), strict=True):
            q = q + s * (a - r * (yk * q).sum(-1, keepdim=True))
        q = torch.where(done.unsqueeze(-1), 0.0, q)
        zd = logits(q)  # the logits along the direction: z + step * zd
        step = _line_search(z, zd, yv, train, (reg * w * q).sum(-1), (reg * q * q).sum(-1))
        step = torch.where(done, 0.0, step)
        s = step.unsqueeze(-1) * q
        w = w + s
        z = torch.addcmul(z, step.unsqueeze(-1), zd)
        gn = gradient(z, w)
        yk = gn - g
        g = gn
        sy = (s * yk).sum(-1, keepdim=True)
        S.append(s)
        Y.append(yk)
        rho.append(torch.where(sy > 1e-10, 1.0 / sy.clamp(min=1e-300), 0.0))
        if len(S) > memory:
            S.pop(0)
            Y.pop(0)
            rho.pop(0)
    return w, z


@torch.no_grad()
def fit_logistic_folds(X: Tensor, y: Tensor, folds: Sequence[tuple], *, C: float = 1.0, max_iter: int = 300,
                       tol: float = 1e-4) -> tuple[Tensor, Tensor]:
    """One fit per layer and fold (its training rows), by preconditioned L-BFGS, all at once.

    X: `layer batch d`, y: `batch` in {0, 1}, folds: (train, test) index pairs. Returns
    (coef `layer fold d`, intercept `layer fold`).
    """
    _check(X, y, C)
    train, _ = _folds_mask(folds, X.shape[1])
    w, _ = _lbfgs_folds(X.float(), y.double(), train, _reg(X.shape[2], C).double(), tol=tol, max_iter=max_iter)
    return w[..., :-1].float(), w[..., -1].float()


@torch.no_grad()
def cv_accuracy_batched(X: Tensor, y: Tensor, folds: Sequence[tuple], *, C: float = 1.0, max_iter: int | None = None,
                        tol: float = 1e-4, solver: str = "lbfgs") -> Tensor:
    """Held-out accuracy `layer fold` for every layer and fold.

    `solver="lbfgs"` (default): `fit_logistic_folds`, all layers x folds in one L-BFGS run
    (`max_iter` default 300); the held-out logits come with it.

    `solver="newton"` (`max_iter` default 30): each fold is solved to the same tolerance as
    `fit_logistic_batched`, but cheaply: folds share (k-1)/k of their rows, so the full-data solution `w0` is close to every fold's. A
    fold starts there with the Hessian at `w0` of *its* rows, obtained by subtracting the
    held-out rows' share from the full Hessian (a k-th of the cost of forming it), factorised
    once; its Newton steps then cost only a gradient (a few matrix-vector products). The
    Hessian is refreshed at the current point if the gradient stops shrinking quickly.
    """
    _check(X, y, C)
    if solver == "lbfgs":
        train, test = _folds_mask(folds, X.shape[1])
        _, z = _lbfgs_folds(X.float(), y.double(), train, _reg(X.shape[2], C).double(), tol=tol,
                            max_iter=300 if max_iter is None else max_iter)
        hit = ((z > 0) == y.bool()).double() * test
        return (hit.sum(-1) / test.sum(-1)).float()
    if solver != "newton":
        raise ValueError(f"solver: expected 'lbfgs' or 'newton', got {solver!r}")
    max_iter = 30 if max_iter is None else max_iter
    Xa, Xt = _design(X)
    yv = y.float()
    L, n, d = X.shape
    reg = _reg(d, C)
    ridge = torch.diag(reg + 1e-10)
    w0 = _newton(Xa, Xt, yv, reg, torch.zeros(L, d + 1), max_iter=max_iter, tol=tol)
    p0 = torch.sigmoid(torch.bmm(Xa, w0.unsqueeze(-1)).squeeze(-1))
    s0 = (p0 * (1 - p0)).clamp(min=1e-10)
    H0 = torch.bmm(Xt * s0.unsqueeze(1), Xa)
    out = torch.zeros(L, len(folds))
    for j, (tr, te) in enumerate(folds):
        tr, te = torch.as_tensor(tr), torch.as_tensor(te)
        keep = torch.zeros(n)
        keep[tr] = 1.0
        Xte = Xa[:, te]
        H = H0 - torch.bmm(Xte.transpose(1, 2) * s0[:, te].unsqueeze(1), Xte)
        if len(tr) + len(te) != n:  # rows in neither part: the train Hessian from its own rows
            H = torch.bmm(Xt * (s0 * keep).unsqueeze(1), Xa)
        lu = torch.linalg.lu_factor((H + ridge).double())
        w = _newton(Xa, Xt, yv, reg, w0, max_iter=max_iter, tol=tol, keep=keep, lu=lu)
        out[:, j] = (predict_batched(X[:, te], w[:, :-1], w[:, -1]) == y[te]).float().mean(1)
    return out
