"""Circuits: patching heatmaps on entity tracking for both models, and the CMAP table."""

import streamlit as st

from apps.explorer import compute
from apps.explorer.state import failsafe, optional, sidebar

st.title("Circuits: which components carry entity tracking, and what did the fine-tune improve?")
ctx = sidebar()
pair = ctx.pair

with st.form("circuits"):
    c = st.columns(3)
    n = c[0].slider("episodes", 8, 64, 8, step=8)
    n_obj = c[1].slider("objects per episode", 2, 7, 3)
    comp = c[2].selectbox("component", ["resid_pre", "attn_out", "mlp_out"])
    go = st.form_submit_button("Patch")
if go:
    st.session_state["circ_args"] = (n, n_obj, comp)

if "circ_args" in st.session_state:
    n, n_obj, comp = st.session_state["circ_args"]
    if optional("workbench.patching") is not None:
        with failsafe("Activation patching"):
            sweeps = compute.patching(ctx.key, pair, n, n_obj, comp)
            st.caption("Corrupted run = another episode of the same length; each cell patches the clean "
                       "activation into it and reads p(correct object).")
            cols = st.columns(2)
            for col, (role, sw) in zip(cols, sweeps.items(), strict=True):
                fig = sw.plot()
                fig.update_layout(title=f"{getattr(pair, role).name}: {fig.layout.title.text or ''}")
                col.plotly_chart(fig, key=f"patch_{role}")
    st.subheader("CMAP: patch tuned activations into the base model")
    if optional("workbench.cmap") is not None:
        with failsafe("CMAP (layers)"):
            cm_comp = "attn_out" if comp != "mlp_out" else "mlp_out"
            cm = compute.cmap_layers(ctx.key, pair, n, n_obj, cm_comp)
            st.plotly_chart(cm.plot(), key="cmap_layers")
            st.dataframe(cm.to_frame(), hide_index=True, key="cmap_table")
        with st.form("cmap_heads"):
            heads = [f"L{layer}.H{h}" for layer in range(pair.arch.n_layers) for h in range(pair.arch.n_heads)]
            picked = st.multiselect("heads to patch (one group)", heads, default=heads[:2])
            pos = st.selectbox("at position", ["last", "query_label", "earlier", "object"])
            run = st.form_submit_button("Run CMAP for these heads")
        if run and picked:
            with failsafe("CMAP (heads)"):
                hs = tuple(sorted((int(s[1:].split(".")[0]), int(s.split(".H")[1])) for s in picked))
                res = compute.cmap_heads(ctx.key, pair, n, n_obj, (("picked", hs, pos),))
                st.dataframe(res.to_frame(), hide_index=True, key="cmap_heads_table")
