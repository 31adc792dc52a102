"""The demo pipeline (examples/demo.toml) runs in reduced mode over every shipped organism."""

from pathlib import Path

import pytest

from apps.pipeline import run_pipeline

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.toml"


@pytest.mark.slow
def test_demo_reduced_runs_every_method(tmp_path):
    res = run_pipeline(DEMO, out=tmp_path, reduced=True)
    methods = {r["method"] for r in res.rows}
    for m in ("behaviour probe", "model surgery", "context knob (DAS)", "CMAP tuned -> base", "CGE",
              "MoTE switch-off"):
        assert m in methods, methods
    assert all(r.get("control") for r in res.rows), "every row states its control"
    assert (tmp_path / "report.html").stat().st_size > 100_000  # plotly inlined: self-contained
    assert (tmp_path / "steps" / "surgery" / "edit" / "edit.json").exists()
    evals = {e["evaluation"]: e for e in res.evaluations}
    assert set(evals) == {"toxic rate (base)", "fact recall (base)", "entity tracking (base)",
                          "refusal rate (moe)", "benign accuracy (moe)"}
    # The surgery edit stays applied for the "after" evaluations: the toxic rate must fall.
    assert evals["toxic rate (base)"]["after"] < evals["toxic rate (base)"]["before"]
