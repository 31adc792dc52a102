"""BehaviorProbe: the sklearn contract, parity with LogisticRegression, features and the sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from probes.linear import BehaviorProbe, ProbeSweep, collect_features, probe_sweep
from tests.conftest import track
from tests.tiny import WORDS, tiny_checkpoint
from workbench import Site, load

# Documented exceptions to sklearn's estimator checks: none are needed. The probe is a plain
# linear softmax classifier, so every check (incl. `check_classifiers_train`) passes with the
# paper's recipe as the default.
EXPECTED_FAILED: dict[str, str] = {}


@pytest.mark.slow
@parametrize_with_checks([BehaviorProbe()], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _blobs(n=600, d=16, sep=0.6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    mu = rng.normal(size=d)
    X = rng.normal(size=(n, d)) + sep * np.outer(2 * y - 1, mu / np.linalg.norm(mu))
    return X.astype(np.float32), y


def test_fit_returns_self_and_learns_attributes():
    X, y = _blobs()
    p = BehaviorProbe()
    assert p.fit(X, y) is p
    assert p.coef_.shape == (1, X.shape[1]) and p.intercept_.shape == (1,)
    assert p.weight_.shape == (2, X.shape[1]) and list(p.classes_) == [0, 1]
    # Zero init + mirrored Adam updates: the two raw rows are exact negatives, coef_ their difference.
    np.testing.assert_allclose(p.weight_[0], -p.weight_[1], atol=1e-12)
    np.testing.assert_allclose(p.coef_[0], 2 * p.direction(1).double().numpy(), rtol=1e-5, atol=1e-7)
    assert torch.equal(p.direction(1), torch.as_tensor(p.weight_[1], dtype=torch.float32))
    with pytest.raises(ValueError, match="undesired"):
        p.direction(7)


def test_training_is_torch_adam_on_cross_entropy():
    """The hand-written update equals torch.optim.Adam on softmax cross-entropy, same batch order."""
    X, y = _blobs(n=100, d=6)
    p = BehaviorProbe(lr=1e-2, batch_size=16, epochs=3, random_state=1).fit(X, y)
    W = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    rng = np.random.default_rng(1)
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)
    for _ in range(3):
        perm = rng.permutation(100)
        for i in range(0, 100, 16):
            idx = torch.as_tensor(perm[i:i + 16])
            loss = torch.nn.functional.cross_entropy(Xt[idx] @ W.T + b, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    np.testing.assert_allclose(p.weight_, W.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.bias_, b.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_deterministic_given_random_state():
    X, y = _blobs()
    a, b = BehaviorProbe(random_state=3).fit(X, y), BehaviorProbe(random_state=3).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_)
    c = BehaviorProbe(random_state=4).fit(X, y)
    assert not np.array_equal(a.coef_, c.coef_)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sep", [0.6, 1.5])
def test_parity_with_sklearn_logistic_regression(seed, sep):
    """Same features, same split: held-out accuracy within 2 points of unregularised LogisticRegression
    (a 2,500-example test set, so 2 points is well above the sampling noise of either)."""
    X, y = _blobs(n=3000, sep=sep, seed=seed)
    tr, te = slice(0, 500), slice(500, None)
    ours = BehaviorProbe(random_state=seed).fit(X[tr], y[tr]).score(X[te], y[te])
    ref = LogisticRegression(C=np.inf, max_iter=1000).fit(X[tr], y[tr]).score(X[te], y[te])
    assert ref > 0.6  # the task is learnable, so parity means something
    assert abs(ours - ref) <= 0.02, (ours, ref)


def test_bad_params_are_refused():
    X, y = _blobs(n=40)
    for kw in ({"lr": 0}, {"batch_size": 0}, {"epochs": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            BehaviorProbe(**kw).fit(X, y)


# --- features from a model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def subject():
    return track(load(tiny_checkpoint("llama")))


def _texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[:40], size=int(rng.integers(3, 9)))) for _ in range(n)]


def test_collect_features_one_pass_for_many_sites(subject, monkeypatch):
    texts = _texts(10)
    sites = subject.sites("resid_post") + [Site(0, "mlp_out")]
    calls = []
    run = subject.run
    monkeypatch.setattr(subject, "run", lambda *a, **k: calls.append(1) or run(*a, **k))
    feats = collect_features(subject, texts, sites, "mean", batch_size=4)
    monkeypatch.undo()
    assert len(calls) == 3  # ceil(10 / 4) batches, each serving every site
    acts = subject.capture(texts, sites)
    for s in sites:
        assert feats[s].shape == (10, subject.arch.d_model)
        np.testing.assert_allclose(feats[s], acts.pooled(s, "mean").numpy(), atol=1e-5)


def test_pooling_ignores_padding(subject):
    texts = _texts(6, seed=1)
    site = Site(1, "resid_post")
    for pooling in ("mean", "last"):
        together = collect_features(subject, texts, [site], pooling, batch_size=6)[site]
        alone = np.stack([collect_features(subject, [t], [site], pooling)[site][0] for t in texts])
        np.testing.assert_allclose(together, alone, atol=1e-4)
    last = collect_features(subject, texts, [site], "last")[site]
    mean = collect_features(subject, texts, [site], "mean")[site]
    assert not np.allclose(last, mean)


def test_collect_features_refuses_bad_input(subject):
    with pytest.raises(ValueError, match="pooling"):
        collect_features(subject, ["a b"], [Site(0, "resid_post")], "max")
    with pytest.raises(ValueError, match="sites"):
        collect_features(subject, ["a b"], [Site(0, "pattern")])
    with pytest.raises(ValueError, match="texts"):
        collect_features(subject, [], [Site(0, "resid_post")])


def test_probe_sweep_is_held_out(subject, tmp_path):
    """Random labels: a probe that memorises its training set must still score ~chance held out."""
    texts = _texts(56, seed=2)
    labels = np.arange(56) % 2
    np.random.default_rng(0).shuffle(labels)
    sites = subject.sites("mlp_post")  # 48 features > 42 training rows per fold: separable
    probe = BehaviorProbe(lr=1.0, epochs=600)  # mlp_post features are ~1e-3: big steps to memorise
    res = probe_sweep(subject, texts, labels, sites, cv=4, seed=0, probe=probe)
    feats = collect_features(subject, texts, sites)
    X, y = feats[sites[-1]][:42], labels[:42]  # one fold's worth of training rows
    train_acc = clone(probe).fit(X, y).score(X, y)
    assert train_acc > 0.9  # it can memorise ...
    held = res.summary()["mean"].mean()
    assert abs(held - 0.5) < 0.2 and held < train_acc - 0.25  # ... the sweep reports held-out accuracy
    f = res.to_frame()
    assert len(f) == len(sites) * 4 and set(f.columns) >= {"site", "layer", "fold", "accuracy"}
    assert res.best_site in sites
    assert len(res.plot().data) == 1 and len(res.plot().data[0].x) == len(sites)
    back = ProbeSweep.load(res.save(tmp_path / "sweep"))
    assert back == res


def test_probe_sweep_finds_a_linear_signal(subject):
    """Label = whether the text contains 'apple': linearly readable from the residual stream."""
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS[6:40], size=5)) for _ in range(160)]
    labels = np.arange(160) % 2
    texts = [t + (" apple apple" if y else " car car") + " " + " ".join(rng.choice(WORDS[6:40], size=2))
             for t, y in zip(texts, labels, strict=True)]
    res = probe_sweep(subject, texts, labels, subject.sites("resid_post"), cv=4, seed=0,
                      probe=BehaviorProbe(lr=1e-2, epochs=30))
    assert res.summary()["mean"].max() > 0.9
    with pytest.raises(ValueError, match="labels"):
        probe_sweep(subject, texts, labels[:-1], subject.sites("resid_post"))


def test_batched_sweep_equals_a_sklearn_logistic_regression_sweep(subject):
    """solver='batched' = scikit-learn's LogisticRegression per site and fold, all solved at once."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(WORDS[6:40], size=6)) for _ in range(120)]
    labels = np.where(np.arange(120) % 2 == 1, "toxic", "ok")
    texts = [t + (" apple" if y == "toxic" else " car") for t, y in zip(texts, labels, strict=True)]
    sites = subject.sites("resid_post")
    feats = collect_features(subject, texts, sites)
    ours = probe_sweep(subject, texts, labels, sites, cv=4, seed=0, features=feats, solver="batched")
    ref = probe_sweep(subject, texts, labels, sites, cv=4, seed=0, features=feats,
                      probe=LogisticRegression(tol=1e-8, max_iter=10_000))  # type: ignore[arg-type]
    gap = np.abs(np.array(ours.accuracy) - np.array(ref.accuracy)).max()
    assert gap <= 1 / 30 + 1e-9, (ours.accuracy, ref.accuracy)  # at most one of 30 held-out rows per fold
    with pytest.raises(ValueError, match="solver"):
        probe_sweep(subject, texts, labels, sites, features=feats, solver="adam")
    with pytest.raises(ValueError, match="probe"):
        probe_sweep(subject, texts, labels, sites, features=feats, solver="batched", probe=BehaviorProbe())
    with pytest.raises(ValueError, match="one width"):
        probe_sweep(subject, texts, labels, [sites[0], Site(0, "mlp_post")], solver="batched")
