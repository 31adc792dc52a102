"""A write at resid_mid changes the residual stream, not only the MLP's input.

Both engines reach resid_mid through the second norm's input; the block later adds the MLP
output to that very tensor, so an intervention there must reach resid_post too.
"""

import pytest
import torch

import workbench as wb
from tests.tiny import tiny_subject


@pytest.mark.parametrize("engine", ["tl", "nnsight"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_add_at_resid_mid_reaches_resid_post(family, engine):
    s = tiny_subject(family, engine)
    t = s.tokenize(["the big dog is", "a cat"])
    mid, post, mlp = wb.Site(1, "resid_mid"), wb.Site(1, "resid_post"), wb.Site(1, "mlp_out")
    v = torch.randn(s.arch.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, clean = s.run(t, cache=[post, mlp])
        with s.intervene(wb.Add(mid, v)):
            _, moved = s.run(t, cache=[post, mlp])
    expected = clean[post] + v + (moved[mlp] - clean[mlp])
    torch.testing.assert_close(moved[post], expected, atol=1e-5, rtol=1e-5)
