"""Loading base models and tokenizers, and setting up LoRA, QLoRA or a full fine-tune.

Everything goes through the real ``from_pretrained`` path so a hub id, a local
directory and a ``file://``/``s3://`` prefix behave the same. A base-model catalog
id (``common.catalog``) loads from the catalog's local files (a directory, or a
GGUF file dequantized on load) and passes through to the hub where they are absent. A prefix holding an
adapter (the output of an earlier job) is a valid base: its own base is loaded
and the adapter merged in, which is how SFT -> DPO pipelines chain jobs.
Heavy imports stay inside functions: this module is imported by backends that
API processes load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import Unprocessable
from common.schemas import Method, Precision, TrainingRequest

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_CONFIG = "adapter_config.json"
GGUF_QLORA_REFUSAL = (
    "method 'qlora' cannot train {model}: its weights are a GGUF file, which loads dequantized and "
    "cannot be re-quantized to 4 bits on load; use method 'lora'"
)
MAX_ADAPTER_CHAIN = 8
# Attention projections by architecture family, tried in order; first family present wins.
ATTENTION_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, Gemma, Phi-1/2
    ("qkv_proj", "o_proj"),  # Phi-3
    ("query_key_value", "dense"),  # GPT-NeoX, Falcon, Bloom
    ("c_attn", "c_proj"),  # GPT-2
    ("Wqkv", "out_proj"),  # MPT, ModernBERT
)


class ModelLoadError(RuntimeError):
    """The base model, adapter or tokenizer could not be loaded (exit MODEL_LOAD)."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from, resolved once per job (downloads happen here)."""

    name_or_path: str  # hub id or local directory of the base weights
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    adapter_dirs: tuple[Path, ...] = ()  # earlier jobs' adapters, merged into the base in order
    reference: str = ""  # how a later job can find this base again (URI, catalog or hub id)
    gguf_file: str | None = None  # the base weights are this GGUF file inside name_or_path

    @property
    def tokenizer_path(self) -> str:
        """The last adapter carries the tokenizer it was trained with; prefer it."""
        if self.adapter_dirs and (self.adapter_dirs[-1] / "tokenizer_config.json").is_file():
            return str(self.adapter_dirs[-1])
        return self.name_or_path

    def pretrained_kwargs(self, path: str, *, model: bool = False) -> dict[str, Any]:
        """Keyword arguments of ``from_pretrained(path, ...)``: the GGUF file when ``path`` is the base
        (for a model: unpacked into dense weights, which train like any checkpoint's)."""
        if not self.gguf_file or path != self.name_or_path:
            return {}
        if not model:
            return {"gguf_file": self.gguf_file}
        from transformers import GgufConfig

        return {"gguf_file": self.gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def _is_uri(ref: str) -> bool:
    return ref.startswith(("file://", "s3://"))


def resolve_model(request: TrainingRequest, work_dir: Path) -> ModelSource:
    """Download URI weights into ``work_dir`` and find the base of an adapter.

    Raises:
        ModelLoadError: nothing at the URI, or an adapter whose base cannot be found.
    """
    bm = request.base_model
    token = bm.huggingface_token or bm.auth_token
    secret = token.get_secret_value() if token else None
    ref = base_ref = bm.weights_url or bm.model_name
    base_ref, local, gguf = _locate(ref, work_dir / "base-model")
    adapters: list[Path] = []
    # An adapter's base may itself be an adapter (SFT -> DPO -> ...): follow the chain to real weights.
    while local is not None and gguf is None and (local / ADAPTER_CONFIG).is_file():
        if len(adapters) >= MAX_ADAPTER_CHAIN:
            raise ModelLoadError(f"{ref}: more than {MAX_ADAPTER_CHAIN} adapters stacked on one base")
        adapters.append(local)
        base_ref, local, gguf = _locate(_adapter_base(local), work_dir / f"base-model-{len(adapters)}")
    revision = None if local is not None else bm.revision
    name = str(local) if local is not None else base_ref
    return ModelSource(name, revision, secret, tuple(reversed(adapters)), reference=ref, gguf_file=gguf)


def _locate(ref: str, dest: Path) -> tuple[str, Path | None, str | None]:
    """(hub id or ref, local directory or None, GGUF file name or None) for one ref: catalog ids first.

    Raises:
        ModelLoadError: a catalog entry whose local files are missing; nothing at a URI or directory.
    """
    from common.catalog import resolve
    from common.settings import get_settings

    entry = resolve(ref, get_settings())
    if entry is None:
        return ref, _fetch(ref, dest), None
    if entry.available:
        return entry.path, Path(entry.path), entry.gguf_file
    if Path(entry.path).expanduser().is_absolute():
        raise ModelLoadError(f"base model {ref}: its files are not at {entry.path} ({entry.description})")
    return entry.path, None, None  # not local here: from_pretrained fetches the hub id


def _fetch(ref: str, dest: Path) -> Path | None:
    """Local directory for ``ref``: downloaded for URIs, as-is for existing dirs, None for hub ids."""
    if _is_uri(ref):
        from common.errors import TrainyardError
        from common.storage import ObjectStore

        try:
            files = ObjectStore().download_prefix(ref.rstrip("/"), dest)
        except TrainyardError as e:
            raise ModelLoadError(f"cannot download model weights from {ref}: {e}") from e
        if not files:
            raise ModelLoadError(f"no model files under {ref}")
        return dest
    path = Path(ref)
    if path.is_absolute():
        if not path.is_dir():
            raise ModelLoadError(f"model directory not found: {ref}")
        return path
    return None  # a hub id (common.modelrefs): resolved on the hub, never as a local directory


def _adapter_base(adapter_dir: Path) -> str:
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"unreadable {ADAPTER_CONFIG} in the base model: {e}") from e
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{ADAPTER_CONFIG} names no base_model_name_or_path; cannot load the adapter's base")
    return str(base)


def resolve_precision(precision: Precision) -> Precision:
    """The precision this device can train in: bf16/fp16 need CUDA (bf16: Ampere+), else fp32."""
    import torch

    if precision == Precision.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return precision
    if precision == Precision.fp16 and torch.cuda.is_available():
        return precision
    return Precision.fp32


def torch_dtype(precision: Precision) -> torch.dtype:
    import torch

    return {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(precision, torch.float32)


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (falls back to eos) so batches can be padded.

    Raises:
        ModelLoadError: the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    try:
        path = source.tokenizer_path
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=source.revision, token=source.token, **source.pretrained_kwargs(path)
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the tokenizer of {source.reference or source.name_or_path}: {_first_line(e)}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(request: TrainingRequest, source: ModelSource, work_dir: Path | None = None) -> PreTrainedModel:
    """The base model in the request's precision, 4-bit for QLoRA, adapter merged if the base is one.

    Raises:
        ModelLoadError: weights missing or unloadable; bitsandbytes missing for QLoRA.
    """
    from transformers import AutoModelForCausalLM

    cust = request.customization
    dtype = torch_dtype(resolve_precision(cust.precision))
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": source.revision, "token": source.token}
    quantize = cust.method == Method.qlora
    path = source.name_or_path
    if quantize and source.gguf_file:
        raise Unprocessable([GGUF_QLORA_REFUSAL.format(model=source.reference)])
    if source.adapter_dirs:
        merged = _merge_adapters(source, dtype)
        if not quantize:
            return merged
        # bitsandbytes quantizes on load only: write the merged weights, then reload them in 4 bits.
        path = str((work_dir or source.adapter_dirs[0].parent) / "merged-base")
        merged.save_pretrained(path)
        kwargs["revision"] = None
        del merged
    try:
        if quantize:
            from common.train.quant_shapes import skip_modules

            skip, unfit = skip_modules(path, revision=kwargs["revision"], token=source.token)
            for name, reason in unfit.items():
                log.warning("qlora: %s stays in full precision (%s)", name, reason)
            kwargs["quantization_config"] = bnb_config(request, skip)
            kwargs["device_map"] = _quantized_device_map()
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **source.pretrained_kwargs(path, model=True))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model {source.reference or path}: {_first_line(e)}") from e
    return _dense(model)


def _dense(model: PreTrainedModel) -> PreTrainedModel:
    """A GGUF checkpoint loaded dequantized holds plain dense weights, but keeps its GGUF quantizer
    attached, and the Trainer refuses to train a model whose quantizer cannot train: detach it."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "dequantize", False):
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def _quantized_device_map() -> dict[str, Any] | None:
    """4-bit weights cannot be moved after loading, so they load onto this process's GPU directly."""
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def _merge_adapters(source: ModelSource, dtype: torch.dtype) -> PreTrainedModel:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.name_or_path, dtype=dtype, revision=source.revision, token=source.token,
            **source.pretrained_kwargs(source.name_or_path, model=True),
        )
        _dense(model)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model {source.name_or_path}: {_first_line(e)}") from e
    for adapter in source.adapter_dirs:
        try:
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ModelLoadError(f"cannot apply the adapter of {source.reference}: {_first_line(e)}") from e
    return model


def bnb_config(request: TrainingRequest, skip: list[str] | None = None) -> Any:
    """4-bit BitsAndBytesConfig from ``customization.qlora``; ``skip``: modules kept in full precision
    (``common.train.quant_shapes.skip_modules``; None: transformers' default, the output head).

    Raises:
        ModelLoadError: bitsandbytes is not installed.
    """
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("method 'qlora' needs the bitsandbytes package, which is not installed")
    q = request.customization.qlora
    compute = getattr(torch, q.bnb_4bit_compute_dtype)
    if compute != torch.float32 and resolve_precision(Precision(_PRECISION_OF[q.bnb_4bit_compute_dtype])) == Precision.fp32:
        compute = torch.float32  # this device cannot compute in half precision
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=q.use_double_quant,
        llm_int8_skip_modules=skip,
    )


_PRECISION_OF = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def default_target_modules(model: PreTrainedModel) -> list[str] | str:
    """The attention projections this architecture has, or "all-linear" when none is known."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for family in ATTENTION_PROJECTIONS:
        if all(m in leaves for m in family):
            return list(family)
    return "all-linear"


def lora_config(request: TrainingRequest, model: PreTrainedModel) -> LoraConfig:
    """LoraConfig from ``customization``; extra ``peft.config`` keys pass through by LoraConfig name.

    Raises:
        Unprocessable: ``peft.config`` has keys LoraConfig does not know.
    """
    from dataclasses import fields

    from peft import LoraConfig

    cust = request.customization
    known = {f.name for f in fields(LoraConfig)}
    extra = {k: v for k, v in cust.peft.config.items() if k != "force"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise Unprocessable([f"customization.peft.config: unknown LoRA option(s) {', '.join(unknown)}"])
    extra.setdefault("task_type", "CAUSAL_LM")
    extra.update(
        r=cust.rank,
        lora_alpha=cust.lora_alpha,
        lora_dropout=cust.lora_dropout,
        target_modules=cust.target_modules or default_target_modules(model),
    )
    return LoraConfig(**extra)


def prepare_model(request: TrainingRequest, model: PreTrainedModel) -> LoraConfig | None:
    """Ready ``model`` for its method; returns the LoraConfig the trainer should apply (None for full).

    The adapter itself is applied by the trainer (TRL wants a plain model plus a
    ``peft_config``). QLoRA gets ``prepare_model_for_kbit_training`` first; a full
    fine-tune with ``trainable_layers`` freezes every other parameter.

    Raises:
        Unprocessable: ``trainable_layers`` matches no parameter; bad ``peft.config``.
    """
    cust = request.customization
    if cust.method == Method.full:
        if cust.trainable_layers:
            freeze_except(model, cust.trainable_layers)
        return None
    if cust.method == Method.qlora:
        from peft import prepare_model_for_kbit_training

        gc = request.tuning_parameters.gradient_checkpointing
        prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gc,
            gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        )
    return lora_config(request, model)


def freeze_except(model: PreTrainedModel, patterns: list[str]) -> int:
    """Train only parameters whose names contain one of ``patterns``; returns how many train."""
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad = any(p in name for p in patterns)
        trainable += param.requires_grad
    if not trainable:
        raise Unprocessable(
            [f"customization.trainable_layers {patterns} match no parameter of the model (names look like "
             f"'{next(iter(dict(model.named_parameters())), '')}')"]
        )
    return trainable


def save_adapter_reference(output_dir: Path, source: ModelSource) -> None:
    """Point the saved adapter at the base as a later job can find it (not this job's temp dir)."""
    path = output_dir / ADAPTER_CONFIG
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    # If the base was itself an adapter, this points at that adapter and resolve_model follows the chain.
    if source.reference:
        config["base_model_name_or_path"] = source.reference
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
