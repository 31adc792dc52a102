"""Every explorer page under streamlit.testing: renders without exception, main widgets work,
results appear, and failures are readable messages rather than tracebacks."""

from __future__ import annotations

import pytest

from tests.app.conftest import DEMO_MOE, charts, clean, page, widget


def test_overview_renders_the_weight_diff():
    at = page("overview")
    clean(at)
    assert charts(at) == 3  # heatmap, spectra, concentration
    assert [m.label for m in at.metric][:2] == ["parameters", "tensors changed"]
    assert at.metric[1].value.startswith("2 / ")  # the demo pair's two planted tensors


@pytest.mark.slow
def test_overview_runs_dare_and_graft():
    at = page("overview")
    widget(at, "multiselect", "DARE drop fractions p").set_value([0.9])
    widget(at, "multiselect", "Graft fractions (of all entries)").set_value([1e-2])
    widget(at, "slider", "seeds").set_value(1)
    widget(at, "button", "Run DARE and Graft").click()
    at.run()
    clean(at)
    assert charts(at) == 5 and len(at.dataframe) == 3


def test_activations_kl_follows_the_typed_prompt():
    at = page("activations")
    clean(at)
    assert charts(at) == 5  # similarity, KL, logit lens, diff lens, PCA
    at.text_input(key="act_prompt").set_value("jack screamed at the guard and said").run()
    clean(at)
    html = next(m.value for m in at.markdown if "kl-tokens" in m.value)
    assert ">guard<" in html and ">screamed<" in html and "unk" not in html


@pytest.mark.slow
def test_activations_moe_shows_expert_usage_shift():
    at = page("activations", DEMO_MOE)
    clean(at)
    assert charts(at) == 6


@pytest.mark.slow
def test_probes_and_knob():
    at = page("probes")
    clean(at)
    widget(at, "slider", "prompts").set_value(20)
    widget(at, "slider", "folds").set_value(2)
    widget(at, "button", "Probe both models").click()
    at.run()
    clean(at)
    assert charts(at) == 1 and len(at.dataframe) == 1
    assert set(at.dataframe[0].value["model"]) == {"demo-base", "demo-tuned"}
    widget(at, "selectbox", "train on").set_value("all")
    widget(at, "slider", "intent pairs").set_value(20)
    widget(at, "button", "Fit the knob on the tuned model").click()
    at.run()
    clean(at)
    assert charts(at) == 3  # + separation of both models
    assert len(at.table) == 1 and list(at.table[0].value["condition"])[0] == "no knob"
    at.slider(key="knob_value").set_value(at.slider(key="knob_value").max).run()
    clean(at)
    assert at.table[0].value["condition"].iloc[1].startswith("knob = ")


def test_knob_failure_is_a_readable_message():
    at = page("probes")
    widget(at, "slider", "intent pairs").set_value(20)
    widget(at, "button", "Fit the knob on the tuned model").click()
    at.run()
    assert not at.exception
    # A random demo model answers no intent pair right both ways: the paper's rule has nothing to train on.
    assert any("Knob failed" in e.value and "keep='all'" in e.value for e in at.error)


@pytest.mark.slow
def test_circuits_patching_and_cmap():
    at = page("circuits")
    clean(at)
    widget(at, "slider", "episodes").set_value(8)
    widget(at, "slider", "objects per episode").set_value(2)
    widget(at, "selectbox", "component").set_value("attn_out")
    widget(at, "button", "Patch").click()
    at.run()
    clean(at)
    assert charts(at) == 3 and len(at.dataframe) == 1
    assert "tuned alone" in set(at.dataframe[0].value["patched"])
    widget(at, "multiselect", "heads to patch (one group)").set_value(["L1.H0"])
    widget(at, "button", "Run CMAP for these heads").click()
    at.run()
    clean(at)
    assert len(at.dataframe) == 2


def test_novelty_generates_coloured_tokens():
    at = page("novelty")
    clean(at)
    widget(at, "slider", "examples").set_value(2)
    widget(at, "slider", "max new tokens").set_value(4)
    widget(at, "button", "Generate").click()
    at.run()
    clean(at)
    rows = [m.value for m in at.markdown if "cge-row" in m.value]
    assert len(rows) == 2 and all("<span" in r for r in rows)
    assert list(at.dataframe[0].value["method"]) == ["CGE", "plain sampling (control)"]


def test_edits_fit_apply_revert_download():
    at = page("edits")
    clean(at)
    widget(at, "slider", "gate rows").set_value(4)
    widget(at, "slider", "probe prompts").set_value(20)
    widget(at, "button", "Fit Model Surgery on the tuned model").click()
    at.run()
    clean(at)
    assert at.code and at.code[0].value.startswith("ModelSurgery(")
    assert any("original weights" in m.value for m in at.markdown)
    at.button(key="apply_edit").click().run()
    clean(at)
    assert any("edit applied" in m.value for m in at.markdown)
    at.button(key="revert_edit").click().run()
    clean(at)
    assert any("original weights" in m.value for m in at.markdown)
    assert at.get("download_button")


@pytest.mark.slow
def test_edits_evaluation_table_has_controls():
    at = page("edits", DEMO_MOE)
    clean(at)
    assert at.radio(key="edit_method").options == ["Switch experts", "Graft (top-x % of the fine-tune onto the base)"]
    widget(at, "button", "Make the switch").click()
    at.run()
    at.slider(key="edit_n").set_value(8)
    at.button(key="eval_edit").click().run()
    clean(at)
    cond = list(at.dataframe[0].value["condition"])
    assert cond == ["no edit", "edit", "random experts (seed 0)", "random experts (seed 1)"]


def test_experts_ftri_and_switching():
    at = page("experts", DEMO_MOE)
    clean(at)
    widget(at, "slider", "prompts per group").set_value(4)
    widget(at, "button", "Run fTRI").click()
    at.run()
    clean(at)
    assert charts(at) == 1
    assert len(at.multiselect(key="experts_off").value) == 2  # the top fTRI experts, pre-selected
    at.button(key="experts_generate").click().run()
    clean(at)
    assert len(at.table) == 1 and len(at.table[0].value) == 2
    # forcing an expert on, with a router-logit bias
    at.multiselect(key="experts_on").select(at.multiselect(key="experts_on").options[0])
    at.slider(key="experts_on_bias").set_value(2.0)
    at.button(key="experts_generate").click().run()
    clean(at)
    assert "bias 2.0" in str(at.table[0].value)


def test_experts_page_on_a_dense_pair_explains_itself():
    at = page("experts")
    clean(at)
    assert any("mixture-of-experts" in i.value for i in at.info)


def test_bad_local_paths_give_a_readable_error():
    at = page("overview", "two local HF checkpoints / hub ids", base_path="/nonexistent/base",
              tuned_path="/nonexistent/tuned")
    assert not at.exception
    assert any(e.value.startswith("Loading the pair failed: FileNotFoundError") for e in at.error)


def test_uploads_are_read_as_text_only():
    import pickle

    from apps.explorer.state import parse_upload

    assert parse_upload("p.txt", b"one\n\n two \n") == ["one", "two"]
    assert parse_upload("p.jsonl", b'{"text": "a b"}\n{"prompt": "c"}\n') == ["a b", "c"]
    with pytest.raises(ValueError, match="line 1"):
        parse_upload("p.jsonl", b'["not", "an object"]\n')

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    out = parse_upload("evil.txt", pickle.dumps(Boom()))  # decoded as text, never unpickled
    assert isinstance(out, list)


def test_launcher_binds_localhost_by_default():
    from apps.app_launcher import command

    cmd = command()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8501"
    with pytest.raises(ValueError, match="port"):
        command(port=0)


def test_zoo_pairs_are_offered_and_load():
    """The shipped organisms appear in the picker (tuned pairs first) and a self-pair loads."""
    from apps.explorer.state import zoo_choices

    choices = zoo_choices()
    assert choices[:3] == ["zoo: entity-tuned", "zoo: intent-tuned", "zoo: novel-tuned"]
    assert "zoo: moe (vs itself)" in choices
    at = page("experts", "zoo: moe (vs itself)")
    clean(at)
    assert at.get("form")  # the fTRI form: the MoE organism loaded as a pair with itself
