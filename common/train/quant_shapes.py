"""Which linear layers bitsandbytes' 4-bit paths can hold, decided from their shapes before loading.

bitsandbytes quantizes a weight of shape [out, in] in blocks of ``BLOCKSIZE`` values. On CPUs with
AVX-512 BF16 its ``Linear4bit`` repacks the weight for a fused kernel the first time it runs without
gradients (evaluation, generation): ``_convert_weight_packed_for_cpu`` reshapes the block scales to
``[out, in // blocksize]`` and tiles the rows by ``block_n`` (32), so ``in`` must be a multiple of the
block size and ``out`` of 32; other layers fail there with a reshape error. CUDA and the other CPU
paths take any shape. Real models' widths are multiples of 64, so this only trims odd layers: they
stay in full precision (``llm_int8_skip_modules``) instead of failing the job mid-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCKSIZE = 64  # bitsandbytes' 4-bit block (BitsAndBytesConfig has no knob for it)
PACKED_BLOCK_N = 32  # rows per tile of the packed CPU layout


def unfit_reason(in_features: int, out_features: int, blocksize: int = BLOCKSIZE) -> str | None:
    """Why a [out_features, in_features] weight cannot go through every 4-bit path, or None."""
    if in_features % blocksize:
        return f"input width {in_features} is not a multiple of {blocksize}"
    if out_features % PACKED_BLOCK_N:
        return f"output width {out_features} is not a multiple of {PACKED_BLOCK_N}"
    return None


def unfit_linears(model: torch.nn.Module, skipped: Sequence[str] = ()) -> dict[str, str]:
    """name -> reason for every nn.Linear (not already in ``skipped``) that 4 bits cannot hold everywhere."""
    import torch

    out: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or any(name == s or name.endswith("." + s) for s in skipped):
            continue
        reason = unfit_reason(module.in_features, module.out_features)
        if reason:
            out[name] = reason
    return out


def skip_modules(path: str, **load_kwargs: object) -> tuple[list[str], dict[str, str]]:
    """(``llm_int8_skip_modules`` for the model at ``path``, the layers kept in full precision and why).

    Builds the model's skeleton on the meta device (no weights are read) to see its layer shapes; the
    list keeps transformers' own default skips (the output head), which an explicit list replaces.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, **load_kwargs)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    try:
        from transformers.quantizers.base import get_keys_to_not_convert

        default = list(get_keys_to_not_convert(skeleton))
    except ImportError:
        default = ["lm_head"]
    unfit = unfit_linears(skeleton, default)
    return default + sorted(unfit), unfit
