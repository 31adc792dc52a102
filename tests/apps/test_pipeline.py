"""Pipelines: validation before any model loads, outputs, and resume after a hard kill."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apps.pipeline import run_pipeline
from apps.spec import PipelineError
from tests.tiny import tiny_checkpoint

GOOD = "the big dog is very good . the cat is good".split()
BAD = "the big dog is very bad . the cat is bad".split()


def _write(tmp: Path, model: Path, extra_step: str = "") -> Path:
    rows = [{"text": " ".join(GOOD[: 3 + i % 6]), "label": 0} for i in range(20)]
    rows += [{"text": " ".join(BAD[: 3 + i % 6]), "label": 1} for i in range(20)]
    (tmp / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp / "p.toml").write_text(textwrap.dedent(f"""
        title = "test pipeline"
        [subjects.m]
        model = "{model}"
        [datasets.d]
        jsonl = "data.jsonl"
        [[steps]]
        id = "first"
        kind = "probe"
        subject = "m"
        dataset = "d"
        cv = 2
        [[steps]]
        id = "second"
        kind = "surgery"
        subject = "m"
        probe = "first"
        dataset = "d"
        n_rows = 4
        control_seeds = 1
        max_new_tokens = 3
        {extra_step}
        [[evaluations]]
        id = "toxic"
        kind = "behaviour_rate"
        subject = "m"
        dataset = "d"
        max_new_tokens = 3
    """))
    return tmp / "p.toml"


THIRD = """
        [[steps]]
        id = "third"
        kind = "probe"
        subject = "m"
        dataset = "d"
        pooling = "last"
        cv = 2
"""


@pytest.fixture(scope="module")
def model():
    return tiny_checkpoint("llama")


def test_runs_and_writes_outputs(tmp_path, model):
    res = run_pipeline(_write(tmp_path, model), out=tmp_path / "out")
    out = tmp_path / "out"
    for f in ("results.json", "report.html", "steps/second/edit/edit.json", "steps/second/edit/delta.safetensors"):
        assert (out / f).exists(), f
    assert res.computed == ["first", "second"] and res.reused == []
    html = (out / "report.html").read_text()
    assert "plotly" in html and "model surgery" in html
    r = json.loads((out / "results.json").read_text())
    assert {row["method"] for row in r["rows"]} == {"behaviour probe", "model surgery"}
    assert "control_value" in r["rows"][1]
    eff = r["steps"]["second"]["edit_effect"]  # what the surgery changed inside: gate rows only
    assert eff["weights_changed"]["name"] and all("gate_proj" in n for n in eff["weights_changed"]["name"])
    assert "edit: weight diff" in html
    # a second run reuses everything, and reports the same numbers
    again = run_pipeline(_write(tmp_path, model), out=tmp_path / "out")
    assert again.computed == [] and again.reused == ["first", "second"]
    assert again.rows == res.rows


def test_probe_direction_site_and_relative_alpha(tmp_path, model):
    """The probe step can export another layer's direction; surgery can take alpha relative to the
    gate rows (`scale`), which is what the notebook's grid chooses."""
    import workbench as wb
    from edits.base import Edit
    from edits.surgery import alpha_for

    f = _write(tmp_path, model)
    f.write_text(f.read_text().replace("cv = 2", 'cv = 2\n        direction_site = "L0.resid_post"', 1)
                 .replace("n_rows = 4", "n_rows = 4\n        scale = 2.0", 1))
    run_pipeline(f, out=tmp_path / "out")
    probe = json.loads((tmp_path / "out/steps/first/output.json").read_text())["data"]
    assert probe["direction_site"] == "L0.resid_post"
    edit = Edit.load(tmp_path / "out/steps/second/edit")
    assert edit.direction.tolist() == pytest.approx(probe["direction"])
    s = wb.load(model)
    assert edit.alpha == pytest.approx(alpha_for(s, edit.direction, 2.0), rel=1e-5)
    f.write_text(f.read_text().replace('direction_site = "L0.resid_post"', 'direction_site = "L9.resid_post"'))
    with pytest.raises(Exception, match="direction_site: expected one of"):
        run_pipeline(f, out=tmp_path / "out2")


def test_probe_data_reads_full_texts_and_meta_labels():
    from apps.steps import _probe_data
    from workbench import tasks

    ex = tasks.behaviour(40, seed=0, split="train")

    class Ctx:
        def dataset(self, name):
            return ex if name == "b" else (["a b"], [1])

    texts, labels = _probe_data(Ctx(), {"dataset": "b", "text": "text", "label": "toxic_target"})
    assert texts == [e.text for e in ex] and labels == [int(e.meta["toxic_target"]) for e in ex]
    assert _probe_data(Ctx(), {"dataset": "b", "text": "prompt", "label": "label"})[1] == [e.label for e in ex]
    with pytest.raises(ValueError, match="label: expected 'label' or a meta key"):
        _probe_data(Ctx(), {"dataset": "b", "text": "text", "label": "colour"})
    with pytest.raises(ValueError, match="need a builder dataset"):
        _probe_data(Ctx(), {"dataset": "j", "text": "text", "label": "label"})


KILLER = """
import os, sys
from apps import steps
from apps.pipeline import run_pipeline
orig = steps.STEP_KINDS["probe"].run
def run(ctx, cfg):
    if cfg["id"] == "third":
        os._exit(17)  # a hard kill in the middle of step 3: no clean-up runs
    return orig(ctx, cfg)
steps.STEP_KINDS["probe"] = steps.Kind(steps.PROBE.schema, run, restore=steps.PROBE.restore)
run_pipeline(sys.argv[1], out=sys.argv[2])
"""


def test_resume_after_kill(tmp_path, model):
    f = _write(tmp_path, model, THIRD)
    p = subprocess.run([sys.executable, "-c", KILLER, str(f), str(tmp_path / "out")],
                       cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert p.returncode == 17, p.stderr[-2000:]
    assert (tmp_path / "out/steps/second/key.txt").exists()
    assert not (tmp_path / "out/steps/third/key.txt").exists()
    res = run_pipeline(f, out=tmp_path / "out")
    assert res.reused == ["first", "second"] and res.computed == ["third"]


@pytest.mark.parametrize("patch, message", [
    (("n_rows = 4", "n_rows = \"many\""), r"steps\[1\]\.n_rows: expected an integer, got 'many'"),
    (("cv = 2", "cv = 2\n        colour = 3"), r"steps\[0\]\.colour: unknown key"),
    (("jsonl = \"data.jsonl\"", "jsonl = \"missing.jsonl\""), r"datasets\.d\.jsonl: file not found"),
    (("kind = \"surgery\"", "kind = \"surgeon\""), r"steps\[1\]\.kind: expected one of"),
    (("probe = \"first\"", "probe = \"later\""), r"steps\[1\]\.probe: expected the id of an earlier step"),
    (("dataset = \"d\"\ncv = 2", "dataset = \"e\"\ncv = 2"), r"steps\[0\]\.dataset: no dataset named 'e'"),
    (("[subjects.m]", "[subjects.m]\n        engine = \"jax\""), r"subjects\.m\.engine: expected one of"),
])
def test_validation_errors_name_file_key_and_expectation(tmp_path, model, patch, message, monkeypatch):
    import workbench.models

    f = _write(tmp_path, model)
    text = f.read_text()
    assert patch[0] in text  # the mutation must really happen
    f.write_text(text.replace(*patch, 1))

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(workbench.models, "load", no_load)
    with pytest.raises(PipelineError, match=r"p\.toml: " + message):
        run_pipeline(f, out=tmp_path / "out")


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="no such pipeline file"):
        run_pipeline(tmp_path / "nope.toml")
