"""CGE mechanics on a tiny random pair: scores, caches, plausibility, beam, iterative CGE, errors."""

from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from tests.conftest import track
from tests.tiny import tiny_checkpoint
from workbench.contrast import (
    CGEResult,
    IterativeCGEResult,
    _banned,
    _score_ids,
    contrastive_generate,
    iterative_cge,
    novelty_scores,
    prompt_ids,
)
from workbench.contrast_decode import hf_twin, step_scores


def test_twin_shares_weights_and_matches_subject(pair):
    ids = pair.base.tokenize(["the apple is in box", "red car on the tree"])
    twin = hf_twin(pair.base)
    got = twin(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
               position_ids=(ids.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(got, pair.base.forward(ids), rtol=0, atol=1e-5)
    shared = dict(twin.named_parameters())
    assert all(shared[k] is v for k, v in pair.base.params.items())
    copy = hf_twin(pair.base, copy=True)
    for k, v in copy.named_parameters():
        assert v is not pair.base.params[k] and torch.equal(v, pair.base.params[k])


def test_step_scores_match_definition():
    g = torch.Generator().manual_seed(0)
    lt, lb = torch.randn(3, 40, generator=g) * 3, torch.randn(3, 40, generator=g) * 3
    obj, con = step_scores(lt, lb, alpha=0.1, gamma=0.5, banned=(0, 7))
    pt, pb = lt.softmax(-1).double(), lb.softmax(-1).double()
    pt_sel = pt.clone()
    pt_sel[:, [0, 7]] = 0
    keep = pt_sel >= 0.1 * pt_sel.max(-1, keepdim=True).values
    want = torch.where(keep, pt.log() - 0.5 * pb.log(), -math.inf)
    assert torch.equal(torch.isfinite(obj), keep)
    torch.testing.assert_close(obj[keep].double(), want[keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(con.double(), pt.log() - pb.log(), atol=1e-5, rtol=0)


def test_cached_scores_equal_full_forward_scores(pair):
    r = contrastive_generate(pair, n=6, max_new_tokens=10, seed=3)
    assert isinstance(r, CGEResult) and len(r) == 6
    full = _score_ids(pair, r.token_ids, prompt_ids(pair.tuned.tokenizer, None))
    for a, b in zip(r.token_scores, full, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
    assert r.scores == pytest.approx([sum(c) for c in r.token_scores])
    # Texts round-trip through the tokenizer, so novelty_scores re-derives the same numbers.
    ns = novelty_scores(pair, r.texts)
    assert ns.scores == pytest.approx(r.scores, abs=1e-3)
    assert not any(set(i) & set(_banned(pair)) for i in r.token_ids)


def test_prompt_continuation_scores(pair):
    r = contrastive_generate(pair, n=3, max_new_tokens=6, prompt="the apple is in", seed=1)
    ns = novelty_scores(pair, r.texts, prompt="the apple is in")
    assert ns.scores == pytest.approx(r.scores, abs=1e-3)


def test_alpha_one_is_greedy_tuned_decoding(pair):
    """Only the tuned argmax is plausible at alpha=1: the same tokens as HF greedy search."""
    r = contrastive_generate(pair, n=2, max_new_tokens=8, alpha=1.0, prompt="the red car")
    twin = hf_twin(pair.tuned)
    ids = torch.tensor([prompt_ids(pair.tuned.tokenizer, "the red car")])
    tok = pair.tuned.tokenizer
    out = twin.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                        suppress_tokens=list(_banned(pair)), pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id)
    want = [t for t in out[0, ids.shape[1]:].tolist() if t != tok.eos_token_id]
    assert r.token_ids[0] == r.token_ids[1] == want


def test_seeds(pair):
    a = contrastive_generate(pair, n=4, max_new_tokens=8, seed=0)
    b = contrastive_generate(pair, n=4, max_new_tokens=8, seed=0)
    c = contrastive_generate(pair, n=4, max_new_tokens=8, seed=1)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_contrast_shifts_samples_towards_tuned_over_base(pair):
    """Against plain tuned sampling (gamma=0, the control), gamma=1 picks tokens the base likes less."""
    kw = dict(n=32, max_new_tokens=8, alpha=0.05)
    plain = contrastive_generate(pair, gamma=0.0, **kw)
    cge = contrastive_generate(pair, gamma=1.0, **kw)
    mean = lambda r: sum(r.scores) / sum(len(t) for t in r.token_ids)  # noqa: E731
    assert mean(cge) > mean(plain) + 0.1


def _brute_force(pair, *, alpha, gamma, steps, prefix):
    """Every plausible sequence of <= `steps` new tokens and its summed objective."""
    tok = pair.tuned.tokenizer
    eos, banned = tok.eos_token_id, _banned(pair)
    hyps = []

    @torch.no_grad()
    def objective(ids):
        x = torch.tensor([ids])
        return step_scores(pair.tuned.forward(x)[:, -1], pair.base.forward(x)[:, -1], alpha=alpha, gamma=gamma,
                           banned=banned)[0][0]

    frontier: list[tuple[list[int], float]] = [([], 0.0)]
    for _ in range(steps):
        nxt = []
        for seq, s in frontier:
            obj = objective(prefix + seq)
            for t in torch.isfinite(obj).nonzero()[:, 0].tolist():
                if t == eos:
                    hyps.append((s, seq, True))
                else:
                    nxt.append((seq + [t], s + float(obj[t])))
        frontier = nxt
    hyps += [(s, seq, False) for seq, s in frontier]
    return sorted(hyps, key=lambda h: -h[0])


def test_beam_search_is_exact_with_enough_beams(pair):
    prefix = prompt_ids(pair.tuned.tokenizer, "the")
    want = _brute_force(pair, alpha=0.05, gamma=1.0, steps=3, prefix=prefix)
    assert len(want) > 8  # a real search, not a single path
    r = contrastive_generate(pair, n=4, max_new_tokens=3, alpha=0.05, decoding="beam", num_beams=64, prompt="the")
    assert [h[1] for h in want[:4]] == r.token_ids
    assert r.ended == [h[2] for h in want[:4]]
    # beam search's objective is the reported score at gamma=1
    assert r.scores == pytest.approx([h[0] for h in want[:4]], abs=1e-4)


def test_beam_default_finds_high_scores(pair):
    """A small beam beats sampling on the objective it searches (control: sampled sequences)."""
    beam = contrastive_generate(pair, n=1, max_new_tokens=6, decoding="beam", num_beams=4, alpha=0.3)
    samp = contrastive_generate(pair, n=16, max_new_tokens=6, alpha=0.3)
    full = [s for s, t in zip(samp.scores, samp.token_ids, strict=True) if len(t) == len(beam.token_ids[0])]
    assert beam.scores[0] >= max(full, default=-math.inf) - 1e-4 or len(beam.token_ids[0]) < 6


def test_bad_input(pair, tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        contrastive_generate(pair, n=2, max_new_tokens=4, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        contrastive_generate(pair, n=2, max_new_tokens=4, alpha=1.5)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="n: expected an int >= 1"):
            contrastive_generate(pair, n=bad, max_new_tokens=4)
        with pytest.raises(ValueError, match="n: expected an int >= 1"):
            iterative_cge(pair, n=bad, lr=1e-3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        contrastive_generate(pair, n=2, max_new_tokens=0)
    with pytest.raises(ValueError, match="decoding"):
        contrastive_generate(pair, n=2, max_new_tokens=4, decoding="greedy")
    with pytest.raises(ValueError, match="num_beams"):
        contrastive_generate(pair, n=5, max_new_tokens=4, decoding="beam", num_beams=4)
    with pytest.raises(ValueError, match="gamma"):
        contrastive_generate(pair, n=2, max_new_tokens=4, gamma=-1)
    with pytest.raises(ValueError, match="lr"):
        iterative_cge(pair, n=2, lr=0)
    with pytest.raises(ValueError, match="pair"):
        contrastive_generate((pair.base, pair.tuned), n=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="texts"):
        novelty_scores(pair, [])


def test_pair_with_different_tokenizers_is_refused(tmp_path):
    from tests.tiny import tiny_tokenizer

    other = tiny_checkpoint("llama", tmp_path / "other", seed=2)
    tk = tiny_tokenizer()
    vocab = tk.get_vocab()
    # Same size, two words swapped: shapes agree, the id -> word map does not.
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    swapped = dict(vocab)
    swapped["apple"], swapped["car"] = vocab["car"], vocab["apple"]
    raw = Tokenizer(models.WordLevel(swapped, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(other)
    a = wb.load(tiny_checkpoint("llama", seed=0))
    b = wb.load(other)
    with pytest.raises(ValueError, match="tokenizers differ"):
        wb.ModelPair(a, b)


def test_active_interventions_are_refused(pair):
    v = torch.zeros(pair.arch.d_model)
    with pair.tuned.intervene(wb.Add(wb.Site(0, "resid_post"), v)):
        with pytest.raises(ValueError, match="active interventions"):
            contrastive_generate(pair, n=2, max_new_tokens=4)


def test_iterative_cge_leaves_user_base_bit_identical(pair):
    before = {k: v.detach().clone() for k, v in pair.base.params.items()}
    tuned_before = {k: v.detach().clone() for k, v in pair.tuned.params.items()}
    r = iterative_cge(pair, n=4, lr=1e-2, max_new_tokens=8, return_model=True, seed=0)
    assert isinstance(r, IterativeCGEResult) and len(r) == 4 and len(r.losses) == 4
    for k, v in pair.base.params.items():
        assert torch.equal(v.detach(), before[k]), k
    for k, v in pair.tuned.params.items():
        assert torch.equal(v.detach(), tuned_before[k]), k
    trained = dict(r.base_model.named_parameters())
    assert any(not torch.equal(trained[k], before[k]) for k in before)
    assert all(trained[k] is not v for k, v in pair.base.params.items())
    assert iterative_cge(pair, n=2, lr=1e-2, max_new_tokens=4).base_model is None


def test_iterative_cge_base_copy_learns_what_was_shown(pair):
    """The copy's loss on the examples it was stepped on drops below the user's base's."""
    r = iterative_cge(pair, n=6, lr=3e-2, max_new_tokens=8, return_model=True, seed=2, optimizer="sgd",
                      steps_per_example=3)
    prefix = prompt_ids(pair.tuned.tokenizer, None)
    copy = r.base_model
    user = hf_twin(pair.base)
    eos = pair.tuned.tokenizer.eos_token_id
    for ids, ended in zip(r.token_ids, r.ended, strict=True):
        x = torch.tensor([prefix + ids + ([eos] if ended else [])])
        with torch.no_grad():
            assert copy(input_ids=x, labels=x).loss < user(input_ids=x, labels=x).loss
    # scores are against the user's base, like static CGE; live scores against the moving copy
    full = _score_ids(pair, r.token_ids, prefix)
    assert r.scores == pytest.approx([sum(c) for c in full], abs=1e-4)


def test_results_frame_plot_save(pair, tmp_path):
    r = contrastive_generate(pair, n=3, max_new_tokens=5)
    df = r.to_frame()
    assert list(df.columns) == ["index", "method", "text", "score", "n_tokens", "score_per_token", "ended"]
    tf = r.to_frame("token")
    assert len(tf) == sum(len(t) for t in r.token_ids)
    assert r.plot().data[0].type == "heatmap"
    assert "<span" in r.to_html()
    r2 = CGEResult.load(r.save(tmp_path / "r"))
    assert r2 == r
    it = iterative_cge(pair, n=2, lr=1e-3, max_new_tokens=4, return_model=True)
    it2 = IterativeCGEResult.load(it.save(tmp_path / "it"))
    assert it2.texts == it.texts and it2.losses == it.losses and it2.base_model is None
    ns = novelty_scores(pair, ["the apple", "red car on the tree"])
    assert list(ns.to_frame()["n_tokens"]) == [2, 5]
    ns.plot()


def test_novelty_scores_rank_text_the_tuned_model_prefers(pair):
    """Texts sampled from the tuned model score higher than texts sampled from the base."""
    from workbench.contrast_eval import plain_sample

    t = plain_sample(pair.tuned, n=24, max_new_tokens=10, seed=0)
    b = plain_sample(pair.base, n=24, max_new_tokens=10, seed=0)
    st, sb = novelty_scores(pair, t).scores, novelty_scores(pair, b).scores
    assert sum(st) / len(st) > sum(sb) / len(sb)


@pytest.mark.parametrize("family", ["gpt2", "mixtral"])
def test_other_families(family):
    base = track(wb.load(tiny_checkpoint(family, seed=0)))
    tuned = track(wb.load(tiny_checkpoint(family, seed=1)))
    p = wb.ModelPair(base, tuned)
    r = contrastive_generate(p, n=3, max_new_tokens=6)
    full = _score_ids(p, r.token_ids, prompt_ids(tuned.tokenizer, None))
    for a, b in zip(r.token_scores, full, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
    rb = contrastive_generate(p, n=2, max_new_tokens=4, decoding="beam", num_beams=3)
    assert len(rb) >= 1



def test_same_numbers_on_the_nnsight_engine(pair):
    src = {s.name: s.source for s in pair}
    nn_pair = wb.ModelPair(track(wb.load(src["tiny-base"], engine="nnsight")),
                           track(wb.load(src["tiny-tuned"], engine="nnsight")))
    a = contrastive_generate(pair, n=4, max_new_tokens=8, seed=5)
    b = contrastive_generate(nn_pair, n=4, max_new_tokens=8, seed=5)
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), atol=1e-4, rtol=0)
    ns_a, ns_b = novelty_scores(pair, a.texts), novelty_scores(nn_pair, a.texts)
    assert ns_a.scores == pytest.approx(ns_b.scores, abs=1e-4)
