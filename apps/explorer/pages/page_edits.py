"""Edits: fit and apply Model Surgery, expert switching or a Graft on a private copy of the model;
before/after behaviour and capability against controls; download the edit; revert."""

import pandas as pd
import streamlit as st

from apps.explorer import compute
from apps.explorer.state import failsafe, optional, session_copy, sidebar

st.title("Edits: change the behaviour in the weights, check what it costs")
ctx = sidebar()
pair = ctx.pair
st.caption("Edits go to a private copy of the model (the cached models are shared and never changed).")

methods = ["Model Surgery"] if pair.arch.dense_layers else []
methods += ["Switch experts"] if pair.arch.is_moe else []
methods += ["Graft (top-x % of the fine-tune onto the base)"]
method = st.radio("edit", methods, horizontal=True, key="edit_method")
task = st.selectbox("behaviour", list(compute.BEHAVIOURS), key="edit_task")
task = compute.BEHAVIOURS[task]
n_eval = st.slider("evaluation prompts", 8, 64, 16, step=8, key="edit_n")

edit = None
which = "tuned"
if method == "Model Surgery" and optional("edits.surgery") is not None:
    with st.form("surgery"):
        c = st.columns(3)
        n_rows = c[0].slider("gate rows", 1, 256, 16)
        alpha = c[1].slider("alpha", -3.0, 3.0, 1.0, 0.1)
        n_fit = c[2].slider("probe prompts", 20, 200, 60, step=10)
        fit = st.form_submit_button("Fit Model Surgery on the tuned model")
    if fit:
        st.session_state["surgery_args"] = (task, n_fit, n_rows, alpha)
    if "surgery_args" in st.session_state:
        with failsafe("Model Surgery"):
            edit = compute.fit_surgery(ctx.key, pair.tuned, *st.session_state["surgery_args"])
elif method == "Switch experts" and optional("edits.experts") is not None:
    experts = [f"L{layer}.E{e}" for layer in pair.arch.moe_layers for e in range(pair.arch.n_experts)]
    with st.form("switch"):
        off = st.multiselect("switch off", experts, default=experts[:1])
        mode = st.selectbox("mode", ["drop_renorm", "mask_logits"])
        ok = st.form_submit_button("Make the switch")
    if ok:
        st.session_state["switch_args"] = (tuple(off), mode)
    if "switch_args" in st.session_state:
        with failsafe("Expert switch"):
            from edits.experts import SwitchExperts

            off, mode = st.session_state["switch_args"]
            pairs = [(int(s[1:].split(".")[0]), int(s.split(".E")[1])) for s in off]
            edit = SwitchExperts(off=pairs, mode=mode, model_id=pair.tuned.identity())
elif method.startswith("Graft") and optional("edits.graft") is not None:
    which = "base"
    frac = st.select_slider("fraction of entries", [1e-4, 1e-3, 1e-2, 1e-1], value=1e-3, key="graft_frac")
    with failsafe("Graft"):
        from edits.graft import Graft

        edit = Graft.fit(pair, frac)

if edit is not None:
    st.code(repr(edit), language="text")
    subject = session_copy(ctx, which)
    c = st.columns(3)
    handles = st.session_state.setdefault("edit_handles", {})
    hk = f"{ctx.key}::{which}"
    active = hk in handles and handles[hk].active
    if c[0].button("Apply to my copy", disabled=active, key="apply_edit"):
        with failsafe("Applying the edit"):
            handles[hk] = edit.apply(subject)
            st.rerun()
    if c[1].button("Revert", disabled=not active, key="revert_edit"):
        with failsafe("Reverting"):
            handles[hk].revert()
            st.rerun()
    with failsafe("Preparing the download"):
        c[2].download_button("Download the edit (.zip)", compute.edit_zip(edit), file_name=f"{edit.method}.zip",
                             mime="application/zip", key="download_edit")
    st.markdown(f"**State of your copy:** {'edit applied' if active else 'original weights'}")
    if active:
        with failsafe("Generation with the edit"):
            example = compute.labelled(task, 2)[0][0]
            p = st.text_input("try a prompt", example, key=f"edit_prompt_{task}")
            c = st.columns(2)
            c[0].markdown(f"**original:** {getattr(pair, which).generate([p], max_new_tokens=10)[0]}")
            c[1].markdown(f"**edited:** {subject.generate([p], max_new_tokens=10)[0]}")
        if hasattr(edit, "touched"):  # a weight edit: the diff views show exactly what it wrote
            with failsafe("Weight diff of the edit"):
                from workbench.diff import weight_diff
                from workbench.models import ModelPair

                wd = weight_diff(ModelPair(getattr(pair, which), subject), progress=False)
                st.caption(f"The edit changed {wd.n_changed} tensors: {', '.join(wd.changed())}")
                st.plotly_chart(wd.plot(), key="edit_diff")
    if st.button("Evaluate before / after (with controls)", key="eval_edit"):
        with failsafe("Evaluation"):
            if active:
                handles[hk].revert()
            if method == "Model Surgery":
                res = compute.eval_surgery(ctx.key, subject, edit, repr(edit), task, n_eval)
                st.dataframe(res.to_frame(), hide_index=True, key="eval_table")
            else:
                controls = []
                if method == "Switch experts":
                    from edits.experts import SwitchExperts, random_experts

                    for seed in (0, 1):
                        rnd = random_experts(subject, len(edit.off), seed=seed, exclude=edit.off)
                        controls.append((f"random experts (seed {seed})",
                                         SwitchExperts(off=rnd, mode=edit.mode, model_id=edit.model_id)))
                else:
                    for seed in (0, 1):
                        controls.append((f"random entries (seed {seed})", Graft.random(pair, edit.fraction, seed=seed)))
                rows = compute.before_after(subject, edit, task, n_eval, controls)
                st.dataframe(pd.DataFrame(rows), hide_index=True, key="eval_table")
            if active:
                handles[hk] = edit.apply(subject)
