"""Novelty: contrastive generations (CGE) with tokens coloured by contrast score; iterative CGE on demand."""

import html

import pandas as pd
import streamlit as st

from apps.explorer import compute
from apps.explorer.state import failsafe, optional, sidebar

st.title("Novelty: what does the tuned model know that the base does not?")
ctx = sidebar()
pair = ctx.pair


def coloured(tokens, scores) -> str:
    top = max([abs(float(s)) for s in scores] + [1e-9])
    out = []
    for t, s in zip(tokens, scores, strict=True):
        s = float(s)
        rgb = "40,160,80" if s > 0 else "200,60,60"
        out.append(f'<span title="{s:+.2f}" style="background: rgba({rgb},{0.1 + 0.8 * abs(s) / top:.2f}); '
                   f'padding: 1px 3px; border-radius: 3px">{html.escape(t)}</span>')
    return " ".join(out)


with st.form("cge"):
    c = st.columns(5)
    n = c[0].slider("examples", 2, 16, 4)
    m = c[1].slider("max new tokens", 4, 32, 12)
    alpha = c[2].select_slider("alpha (plausibility)", [0.01, 0.05, 0.1, 0.2, 0.5], value=0.1)
    gamma = c[3].select_slider("gamma", [0.5, 1.0, 2.0], value=1.0)
    seed = c[4].number_input("seed", 0, 1000, 0)
    go = st.form_submit_button("Generate")
if go:
    st.session_state["cge_args"] = (n, m, alpha, gamma, int(seed))
if "cge_args" in st.session_state and optional("workbench.contrast") is not None:
    n, m, alpha, gamma, seed = st.session_state["cge_args"]
    with failsafe("CGE"):
        res = compute.cge(ctx.key, pair, n, m, alpha, gamma, seed)
        st.caption("Green: log p_tuned - log p_base > 0 (the tuned model prefers it); red: < 0.")
        for i in range(len(res.texts)):
            st.markdown(f'<div class="cge-row">{res.scores[i]:+.1f} &nbsp; '
                        f'{coloured(res.tokens[i], res.token_scores[i])}</div>', unsafe_allow_html=True)
    with failsafe("Plain sampling (control)"):
        ctrl = compute.plain(ctx.key, pair, n, m, seed)
        st.dataframe(pd.DataFrame({"method": ["CGE", "plain sampling (control)"],
                                   "mean sequence score": [sum(res.scores) / max(1, len(res.scores)),
                                                           sum(ctrl.scores) / max(1, len(ctrl.scores))]}),
                     hide_index=True, key="cge_vs_plain")
    with st.expander("Iterative CGE"):
        lr = st.select_slider("lr of the base copy", [1e-4, 3e-4, 1e-3, 3e-3], value=1e-3, key="icge_lr")
        if st.button("Run iterative CGE", key="icge_run"):
            with failsafe("Iterative CGE"):
                it = compute.icge(ctx.key, pair, n, m, lr, seed)
                for i in range(len(it.texts)):
                    st.markdown(f'<div class="cge-row">{it.scores[i]:+.1f} &nbsp; '
                                f'{coloured(it.tokens[i], it.token_scores[i])}</div>', unsafe_allow_html=True)
