"""Activations: layer-wise similarity, per-token KL on a typed prompt, logit lens side by side, diff lens."""

import html

import numpy as np
import streamlit as st

from apps.explorer import compute
from apps.explorer.state import failsafe, sidebar

st.title("Activations: where do the two models' representations part?")
ctx = sidebar()
pair = ctx.pair

with failsafe("Activation diff"):
    ad = compute.activation_diff(ctx.key, pair, ctx.prompts)
    st.plotly_chart(ad.plot(), key="similarity")
    st.caption(f"{ad.n_tokens} tokens from {len(ad.texts)} prompts; mean KL(tuned || base) = {ad.mean_kl:.4f} nats. "
               "The dotted line is CKA against shuffled tokens (no correspondence).")

st.subheader("One prompt: KL per token and the logit lens")
text = st.text_input("prompt", value=ctx.prompts[0], key="act_prompt")
if text.strip():
    with failsafe("Per-token KL"):
        one = compute.activation_diff(ctx.key, pair, (text,))
        kl = np.asarray(one.kl[0], dtype=float)
        top = max(float(kl.max()), 1e-9)
        spans = " ".join(
            f'<span title="KL {v:.4f}" style="background: rgba(220,60,60,{0.08 + 0.8 * v / top:.2f}); '
            f'padding: 2px 4px; border-radius: 3px">{html.escape(t)}</span>' for t, v in zip(one.tokens[0], kl, strict=True))
        st.markdown(f'<div class="kl-tokens" style="line-height: 2.2">{spans}</div>', unsafe_allow_html=True)
        st.caption("Shade: KL of the next-token distribution after each token (darker = the models disagree more).")
        st.plotly_chart(one.plot_kl(0), key="kl")
    with failsafe("Logit lens"):
        k = st.slider("top-k", 1, 10, 3, key="lens_k")
        ll = compute.logit_lens(ctx.key, pair, text, k)
        st.plotly_chart(ll.plot(), key="lens")

st.subheader("Diff lens: what the fine-tune pushes up, per layer")
with failsafe("Diff lens"):
    dl = compute.diff_lens(ctx.key, pair, ctx.prompts)
    st.plotly_chart(dl.plot(), key="difflens")
    st.plotly_chart(dl.plot_pca(), key="pca")
    if dl.usage_base is not None:
        st.plotly_chart(dl.plot_experts(), key="experts_shift")
