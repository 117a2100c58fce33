"""Models grokscope trains itself, classified: constant attention (alpha = 0) against standard (alpha = 1).

[Z23]'s phase diagram puts alpha = 0 on the pizza side: with constant attention the MLP sees E_a + E_b
only, so the gradients with respect to the two embeddings coincide (GS ~ 1). With alpha = 1 the
`fast` preset learns a clock (docs/classifier.md records the values).
"""

import pytest
import torch

import grokscope as gs
from grokscope.formats.native import read


@pytest.mark.slow
def test_constant_attention_run_is_gradient_symmetric(tmp_path):
    torch.set_num_threads(1)
    config = gs.TrainConfig.preset("pizza", p=31, epochs=1500, lr=3e-3, checkpoint_every=500)
    run = gs.train(config, tmp_path / "alpha0", progress=False)
    result = gs.classify(run.model(-1), run.task)
    signatures = result.signatures
    assert signatures.accuracy >= 0.99
    assert signatures.gradient_symmetricity >= 0.98
    assert signatures.circularity >= 0.9
    assert result.label in ("pizza", "uninterpreted")
    assert result.label == "pizza" or result.reason == "mixed"


@pytest.mark.slow
def test_standard_attention_fast_run_is_a_clock(fast_run_dir):
    run = read(fast_run_dir)
    result = gs.classify(run.model(-1), run.task)
    assert result.signatures.accuracy == 1.0
    assert result.signatures.gradient_symmetricity <= 0.9
    assert result.signatures.di_correct >= 0.6
    assert result.label == "clock"
