"""4-bit QLoRA on layers of any width: the shape rule agrees with bitsandbytes' packed CPU layout, and a
model with odd widths loads with those layers kept in full precision instead of failing mid-job.

On CPUs with AVX-512 BF16 bitsandbytes repacks 4-bit weights the first time a layer runs without
gradients; a 96-wide layer then fails with "shape '[96, 1]' is invalid for input of size 144" and a
48-row one with "N must be divisible by block_n". The repacking function is plain torch, so its
verdict is checked here on any CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

bnb = pytest.importorskip("bitsandbytes")

import torch  # noqa: E402
from bitsandbytes.functional import _convert_weight_packed_for_cpu, quantize_4bit  # noqa: E402

from common.schemas import TrainingRequest  # noqa: E402
from common.train.models import ModelSource, load_causal_lm  # noqa: E402
from common.train.quant_shapes import BLOCKSIZE, unfit_reason  # noqa: E402

SHAPES = [(128, 64), (64, 32), (256, 128), (96, 96), (96, 48), (128, 48), (172, 64), (64, 16)]


def packs(in_features: int, out_features: int) -> bool:
    packed, state = quantize_4bit(torch.randn(out_features, in_features), blocksize=BLOCKSIZE, quant_type="nf4")
    try:
        _convert_weight_packed_for_cpu(packed, state)
    except (RuntimeError, AssertionError):
        return False
    return True


@pytest.mark.parametrize(("in_features", "out_features"), SHAPES)
def test_rule_matches_bitsandbytes_packed_layout(in_features: int, out_features: int) -> None:
    assert (unfit_reason(in_features, out_features) is None) == packs(in_features, out_features)


def test_odd_widths_stay_in_full_precision_and_evaluate(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "odd")
    request = TrainingRequest.model_validate({
        "base_model": {"model_name": str(tmp_path / "odd")},
        "customization": {"method": "qlora", "precision": "fp32"},
        "datasets": [{"source": "file:///unused.jsonl", "split": "train"}],
    })
    model = load_causal_lm(request, ModelSource(str(tmp_path / "odd")), tmp_path)
    layer = model.model.layers[0]
    # hidden 96: every projection reading it stays full precision; up/gate read 96 too; down reads 256
    assert type(layer.self_attn.q_proj) is torch.nn.Linear
    assert type(layer.mlp.gate_proj) is torch.nn.Linear
    assert isinstance(layer.mlp.down_proj, bnb.nn.Linear4bit)  # 256 in, 96 out: fits
    model.eval()
    with torch.no_grad():  # the pass that repacks 4-bit weights on AVX-512 BF16 CPUs
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()
