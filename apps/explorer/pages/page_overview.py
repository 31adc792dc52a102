"""Overview: what changed where. Weight-diff heatmap, delta spectra, concentration, DARE and Graft."""

import streamlit as st

from apps.explorer import compute
from apps.explorer.state import failsafe, sidebar

st.title("Overview: what changed where")
ctx = sidebar()
pair = ctx.pair

with failsafe("Weight diff"):
    wd = compute.weight_diff(ctx.key, pair)
    c = st.columns(4)
    c[0].metric("parameters", f"{wd.n_params:,}")
    c[1].metric("tensors changed", f"{wd.n_changed} / {len(wd.frame)}")
    c[2].metric("delta energy in top 1 %", f"{wd.global_share[-1]:.1%}",
                delta=f"{wd.global_share[-1] - wd.control_share[-1]:+.1%} vs dense control", delta_color="off")
    med = wd.frame.loc[wd.frame["delta_norm"] > 0, "rel_norm"].median() if wd.n_changed else 0.0
    c[3].metric("median |dW|/|W| (changed)", f"{med:.2e}")
    if wd.n_changed == 0:
        st.info("The two models have identical weights: every view below is zero.")
    st.plotly_chart(wd.plot(), key="heatmap")
    left, right = st.columns(2)
    left.plotly_chart(wd.plot_spectra(), key="spectra")
    right.plotly_chart(wd.plot_concentration(), key="concentration")
    st.subheader("Most changed tensors")
    st.dataframe(wd.frame.sort_values("rel_norm", ascending=False).head(15), hide_index=True)

st.subheader("Is the delta redundant? DARE and Graft")
st.caption("DARE drops a fraction p of the delta at random (rescaling the rest); Graft keeps only the top-x % "
           "most changed entries on the base model. Controls: dropping without rescaling, and grafting random "
           "entries. Metric on the prompt set: the log-probability of each prompt's last token (a task "
           "prompt's answer), or of every token.")
with st.form("redundancy"):
    which = compute.METRICS[st.selectbox("metric", list(compute.METRICS))]
    ps = st.multiselect("DARE drop fractions p", [0.5, 0.9, 0.99], default=[0.5, 0.9])
    fr = st.multiselect("Graft fractions (of all entries)", [1e-4, 1e-3, 1e-2, 1e-1], default=[1e-3, 1e-2])
    seeds = st.slider("seeds", 1, 5, 2)
    go = st.form_submit_button("Run DARE and Graft")
if go:
    with failsafe("DARE"):
        d = compute.dare(ctx.key, pair, ctx.prompts, tuple(sorted(ps)), tuple(range(seeds)), which)
        st.plotly_chart(d.plot(), key="dare")
        st.dataframe(d.summary(), key="dare_table")
    with failsafe("Graft"):
        g = compute.graft(ctx.key, pair, ctx.prompts, tuple(sorted(fr)), tuple(range(seeds)), which)
        st.plotly_chart(g.plot(), key="graft")
        st.dataframe(g.summary(), hide_index=True, key="graft_table")
