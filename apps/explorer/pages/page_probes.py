"""Probes & knob: probe accuracy per layer for both models; the knob's projections; steer by hand."""

import pandas as pd
import plotly.express as px
import streamlit as st

from apps.explorer import compute
from apps.explorer.state import failsafe, optional, sidebar

st.title("Probes & knob: where is the behaviour linearly readable, and can we turn it?")
ctx = sidebar()
pair = ctx.pair

st.subheader("Behaviour probe, every layer, both models")
with st.form("probe"):
    c = st.columns(3)
    task = c[0].selectbox("labelled prompts", ["behaviour", "refusal"], help="1 = undesired class (toxic / sensitive)")
    n = c[1].slider("prompts", 20, 200, 40, step=10)
    cv = c[2].slider("folds", 2, 5, 3)
    run_probe = st.form_submit_button("Probe both models")
if run_probe or st.session_state.get("probe_done"):
    st.session_state["probe_done"] = True
    if optional("probes.linear") is not None:
        with failsafe("Probe sweep"):
            sw = compute.probe_sweeps(ctx.key, pair, task, n, cv)
            df = pd.concat([r.summary().assign(model=getattr(pair, role).name) for role, r in sw.items()])
            fig = px.line(df, x="layer", y="mean", error_y="std", color="model", markers=True,
                          title="Held-out probe accuracy per layer (resid_post, mean-pooled)")
            fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
            fig.update_xaxes(dtick=1)
            st.plotly_chart(fig, key="probe_plot")
            st.dataframe(df, hide_index=True, key="probe_table")

st.subheader("Context-sensitivity knob")
knob_mod = optional("probes.knob")
if knob_mod is not None:
    with st.form("knob"):
        c = st.columns(4)
        layer = c[0].selectbox("layer", list(range(pair.arch.n_layers)), index=pair.arch.n_layers // 2)
        method = c[1].selectbox("direction", ["diff_means", "das"], help="difference of means (fast) or DAS")
        n_items = c[2].slider("intent pairs", 20, 200, 40, step=10)
        keep = c[3].selectbox("train on", ["confident", "all"], help="confident: only items the model answers "
                              "right both ways (the paper's rule)")
        fit = st.form_submit_button("Fit the knob on the tuned model")
    if fit:
        st.session_state["knob_args"] = (layer, method, n_items, keep)
    if "knob_args" in st.session_state:
        with failsafe("Knob"):
            k, seps, bare = compute.knob(ctx.key, pair, *st.session_state["knob_args"])
            c = st.columns(2)
            for col, (role, sep) in zip(c, seps.items(), strict=True):
                col.plotly_chart(sep.plot(), key=f"sep_{role}")
            st.caption(f"interchange accuracy {k.interchange_acc:.2f} (random directions: "
                       f"{k.interchange_acc_random:.2f}); c_ctx = {k.c_ctx:.2f}, c_prior = {k.c_prior:.2f}")
            lo, hi = sorted((k.c_ctx, k.c_prior))
            span = max(hi - lo, 1.0)
            value = st.slider("knob value (projection at the last token)", float(lo - span), float(hi + span),
                              float((lo + hi) / 2), key="knob_value")
            prompt = st.selectbox("prompt (intent instruction removed)", list(bare), key="knob_prompt")
            from workbench.interventions import SetProjection

            iv = SetProjection(k.site, k.direction, value, positions=-1)
            with pair.tuned.intervene(iv):
                steered = pair.tuned.generate([prompt], max_new_tokens=6)[0]
            plain = pair.tuned.generate([prompt], max_new_tokens=6)[0]
            st.table(pd.DataFrame({"condition": ["no knob", f"knob = {value:.2f}"], "continuation": [plain, steered]}))
