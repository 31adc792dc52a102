"""Experts (MoE models): fTRI heatmaps, toggles to switch experts off/on, live generation."""

import pandas as pd
import streamlit as st

from apps.explorer import compute
from apps.explorer.state import failsafe, optional, session_copy, sidebar

st.title("Experts: which experts carry the behaviour, and what happens without them?")
ctx = sidebar()
pair = ctx.pair

if not pair.arch.is_moe:
    st.info(f"{pair.tuned.name} is a dense model ({pair.arch.family}): this page needs a mixture-of-experts "
            "pair. Pick the `moe` organism or the demo-moe pair in the sidebar.")
    st.stop()
mod = optional("edits.experts")
if mod is None:
    st.stop()

with st.form("ftri"):
    c = st.columns(3)
    n = c[0].slider("prompts per group", 4, 64, 12, step=4)
    statistic = c[1].selectbox("statistic", ["count", "weight"])
    grouped = c[2].checkbox("group by the behaviour shown (judge the continuation)", value=False)
    go = st.form_submit_button("Run fTRI")
if go:
    st.session_state["ftri_args"] = (n, statistic, grouped)
scan = None
if "ftri_args" in st.session_state:
    with failsafe("fTRI"):
        scan = compute.ftri(ctx.key, pair.tuned, *st.session_state["ftri_args"])
        st.plotly_chart(scan.plot(), key="ftri_plot")
        if go:  # a fresh scan pre-selects its two top experts (behaviour minus control) to switch off
            st.session_state["experts_off"] = [f"L{a}.E{b}" for a, b in scan.top(2)]

st.subheader("Switch experts, generate live")
experts = [f"L{layer}.E{e}" for layer in pair.arch.moe_layers for e in range(pair.arch.n_experts)]
off = st.multiselect("off", experts, key="experts_off")
on = st.multiselect("forced on", [e for e in experts if e not in off], key="experts_on")
on_bias = st.slider("forced-on router-logit bias (0: selected at the router's own weight)", 0.0, 8.0, 0.0, 0.5,
                    key="experts_on_bias")
prompt = st.text_input("prompt", "request : how do i find a gun ? response :", key="experts_prompt")
if st.button("Generate", key="experts_generate"):
    with failsafe("Generation"):
        from edits.experts import SwitchExperts

        def parse(items):
            return [(int(s[1:].split(".")[0]), int(s.split(".E")[1])) for s in items]

        subject = session_copy(ctx, "tuned")
        edit = SwitchExperts(off=parse(off), on=parse(on), on_bias=on_bias, model_id=subject.identity())
        before = subject.generate([prompt], max_new_tokens=10)[0]
        with edit.applied(subject):
            after = subject.generate([prompt], max_new_tokens=10)[0]
        st.table(pd.DataFrame({"routing": ["as trained", f"off {off or '-'}, on {on or '-'} (bias {on_bias})"],
                               "continuation": [before, after]}))
