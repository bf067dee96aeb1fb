"""UnslothBackend: supervised fine-tuning on Unsloth's ``FastLanguageModel``.

Unsloth pins its own transformers/trl/datasets (and pulls torchvision, which breaks beside the
CPU torch here), so its jobs run in their own environment: ``.venv-unsloth`` locally (``make
install`` builds it with the training image's versions), the training image in a cluster. This
process never imports unsloth: whether it loads where the jobs run is probed in a subprocess of
the job interpreter when the service starts (``common.train.probes``), and ``GET /info`` /
``POST /train`` report the answer.

The recipe follows Unsloth's documentation: ``FastLanguageModel.from_pretrained`` (4-bit for
QLoRA), ``FastLanguageModel.get_peft_model`` (rank, alpha, target modules, dropout, gradient
checkpointing "unsloth"): the model loader it gives the shared recipe (``common.train.recipe``),
which trains with TRL's ``SFTTrainer`` (``common.train.sft``, patched by Unsloth on import) and
saves the adapter like the HuggingFace backend's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from common.schemas import Method, TrainingRequest, TrainingType
from common.train import probes
from common.trainer import BaseTrainerBackend, TrainContext

if TYPE_CHECKING:
    from common.storage import ObjectStore

REPO_ROOT = Path(__file__).resolve().parents[2]
UNSLOTH_VENV = REPO_ROOT / ".venv-unsloth"
# Families FastLanguageModel has its own fast path for (unsloth/models/loader.py dispatch); anything else
# goes to the HuggingFace backend, which trains every causal LM transformers knows.
SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "mistral", "gemma", "gemma2", "qwen2", "qwen3")
# LoRA options FastLanguageModel.get_peft_model takes beyond rank/alpha/dropout/target modules.
PEFT_OPTIONS = frozenset({"task_type", "force", "bias", "use_rslora", "init_lora_weights", "layers_to_transform"})


def job_python(configured: str = "") -> str:
    """Interpreter of the Unsloth jobs: TRAINYARD_PYTHON_EXECUTABLE, else ``.venv-unsloth``, else this one."""
    if configured:
        return configured
    candidate = UNSLOTH_VENV / "bin" / "python"
    return str(candidate) if candidate.exists() else probes.job_python()


class UnslothBackend(BaseTrainerBackend):
    name: ClassVar[str] = "unsloth"
    methods: ClassVar[tuple[Method, ...]] = (Method.lora, Method.qlora, Method.full)
    training_type: ClassVar[str] = "sft"

    def __init__(self, python: str | None = None) -> None:
        """``python``: the job interpreter to probe (the service passes it); None inside a job (this one)."""
        self.python = python
        self._probe: probes.ProbeRun | None = None

    # ----------------------------------------------------------- availability (API process)

    def start(self, runner: str) -> None:
        if runner == "local" and self._probe is None:
            self._probe = probes.ProbeRun("unsloth_loads", self.python or probes.job_python())

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.stop()

    def starting(self, runner: str = "local") -> bool:
        """True while the start-up check is still importing unsloth (about 20 s)."""
        return runner == "local" and self._probe is not None and self._probe.running()

    def unavailable_reason(self, runner: str = "local") -> str | None:
        """Why unsloth cannot load where the jobs run (checked once, by importing it there), or None."""
        if runner != "local":
            return None  # the training image carries unsloth; this API image rightly does not
        reason = self._probe.result() if self._probe is not None else probes.probe("unsloth_loads", self.python)
        if reason is None:
            return None
        where = self.python or probes.job_python()
        return f"unsloth does not load in the job environment ({where}): {reason} (run `make install`)"

    # ----------------------------------------------------------- request checks (API process)

    def check(self, request: TrainingRequest, *, runner: str) -> list[str]:
        problems = super().check(request, runner=runner)
        cust = request.customization
        if cust.method == Method.qlora and (reason := probes.qlora_problem(runner, self.python)):
            problems.append(reason)  # unsloth's load_in_4bit is bitsandbytes nf4
        if cust.trainable_layers:
            problems.append("customization.trainable_layers is not supported by the unsloth backend")
        unknown = sorted(set(cust.peft.config) - PEFT_OPTIONS)
        if unknown:
            problems.append(
                f"customization.peft.config: option(s) {', '.join(unknown)} are not supported by the unsloth backend "
                f"(supported: {', '.join(sorted(PEFT_OPTIONS - {'task_type', 'force'}))})"
            )
        return problems

    def check_inputs(self, request: TrainingRequest, store: ObjectStore) -> list[str]:
        from common.peek import dataset_problems, model_config

        problems = dataset_problems(store, request, TrainingType.sft)
        config = model_config(store, request)
        if config is not None and (family := family_problem(config)):
            problems.append(family)
        return problems

    # ----------------------------------------------------------- training (inside the job)

    def train(self, ctx: TrainContext) -> dict[str, Any]:
        """Raises: DatasetError, ModelLoadError, Unprocessable (unsupported family or LoRA option)."""
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        import unsloth  # first: unsloth patches transformers, trl and peft on import

        from common.train import recipe, sft

        ctx.reporter.log(f"unsloth {unsloth.__version__} in {sys.prefix}")
        return recipe.train(ctx, sft.OBJECTIVE, load_model=_load_model, report={"trainer": "unsloth"})


# --------------------------------------------------------------------------- helpers


def _load_model(ctx: TrainContext, source: Any) -> tuple[Any, Any, None]:
    """The base through ``FastLanguageModel`` (4-bit for QLoRA), with Unsloth's LoRA layers already
    applied, so the trainer gets no ``peft_config``.

    Raises:
        Unprocessable: a family Unsloth does not support.
        ModelLoadError: unsloth cannot load the base.
    """
    from unsloth import FastLanguageModel

    from common.errors import Unprocessable
    from common.train import models

    request = ctx.request
    cust, tp = request.customization, request.tuning_parameters
    path = _local_base(request, source, ctx.work_dir)
    if path is not None and (problem := family_problem(_read_config(path))):
        raise Unprocessable([problem])
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(path) if path is not None else source.name_or_path,
            max_seq_length=tp.max_sequence_length,
            dtype=models.torch_dtype(models.resolve_precision(cust.precision)),
            load_in_4bit=cust.method == Method.qlora,
            full_finetuning=cust.method == Method.full,
            token=source.token,
            revision=source.revision if path is None else None,
            use_gradient_checkpointing="unsloth" if tp.gradient_checkpointing else False,
            random_state=tp.seed,
        )
    except (OSError, ValueError) as e:
        raise models.ModelLoadError(f"unsloth cannot load {source.reference}: {_first_line(e)}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cust.method != Method.full:
        extra = {k: v for k, v in cust.peft.config.items() if k not in ("task_type", "force")}
        model = FastLanguageModel.get_peft_model(
            model,
            r=cust.rank,
            lora_alpha=cust.lora_alpha,
            lora_dropout=cust.lora_dropout,
            target_modules=cust.target_modules or models.default_target_modules(model),
            use_gradient_checkpointing="unsloth" if tp.gradient_checkpointing else False,
            random_state=tp.seed,
            max_seq_length=tp.max_sequence_length,
            **extra,
        )
    return model, tokenizer, None


def family_problem(config: dict[str, Any]) -> str | None:
    """A refusal when ``config.json``'s model_type is not a family Unsloth supports."""
    family = config.get("model_type")
    if family in SUPPORTED_FAMILIES:
        return None
    return (
        f"base_model: model family '{family}' is not supported by the unsloth backend "
        f"(supported: {', '.join(SUPPORTED_FAMILIES)}); train it with the huggingface backend"
    )


def _read_config(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _local_base(request: TrainingRequest, source: Any, work_dir: Path) -> Path | None:
    """A local directory with the base weights for unsloth to load: as resolved, or, when the base is an
    earlier job's adapter, that adapter merged into its base and written out (unsloth loads from a path)."""
    from common.train import models

    if not source.adapter_dirs:
        path = Path(source.name_or_path)
        return path if path.is_dir() else None
    plain = request.model_copy(
        update={"customization": request.customization.model_copy(update={"method": Method.lora})}
    )
    merged = models.load_causal_lm(plain, source, work_dir)
    out = work_dir / "merged-base"
    merged.save_pretrained(out)
    models.load_tokenizer(source).save_pretrained(out)
    return out


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
