"""The transformers + PEFT engine: one loaded base per base model, shared by its fine-tuned models.

A fine-tuned model is a LoRA adapter on a base. Its adapter is attached to the loaded base by name
(PEFT's multi-adapter API: ``load_adapter`` / ``set_adapter``) and chosen per request; a base-model
request runs with adapters disabled. Least recently used adapters (per base) and bases are dropped past
``inference_max_adapters`` / ``inference_max_loaded_bases``. Only the worker process imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from common.errors import NotFound, TrainyardError, Unprocessable
from common.settings import Settings
from common.storage import ObjectStore
from services.inference.engine import (
    Event,
    Exported,
    ExportJob,
    Finished,
    GenerationRequest,
    ModelRef,
    Started,
    Text,
)

log = logging.getLogger("trainyard.inference.engine")
ADAPTER_CONFIG = "adapter_config.json"
COMPLETE = ".complete"  # marks a fully downloaded cache entry


@dataclass
class _Loaded:
    """A base model in memory and the adapters attached to it, least recently used first."""

    model: Any  # PreTrainedModel, or a PeftModel around it once an adapter is attached
    tokenizer: Any
    context_length: int
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # adapter name -> URI

    @property
    def has_adapters(self) -> bool:
        return isinstance(self.model, PeftModel)


class _TokenQueue(BaseStreamer):
    """Receives generated token ids from ``generate`` (the prompt comes first and is skipped)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)

    def pieces(self) -> Iterator[list[int]]:
        """Token ids as ``generate`` makes them; ids that piled up while the caller was busy come as one
        piece, so a consumer slower than the model decodes and sends once per batch, not once per token."""
        while (piece := self.queue.get()) is not None:
            while True:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    yield piece
                    return
                piece += more
            yield piece


class _Until(StoppingCriteria):
    def __init__(self, stop: Callable[[], bool]) -> None:
        self.stop = stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done: torch.BoolTensor = torch.full((input_ids.shape[0],), self.stop(), dtype=torch.bool, device=input_ids.device)  # type: ignore[assignment]
        return done


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might begin a stop sequence and so must wait for the next token."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class TransformersEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ObjectStore(settings)
        self.cache = Path(settings.inference_cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        if settings.inference_threads:
            torch.set_num_threads(settings.inference_threads)
        self.bases: OrderedDict[str, _Loaded] = OrderedDict()

    # ------------------------------------------------------------------ weights

    def _location(self, ref: str) -> tuple[str, str | None]:
        """What ``from_pretrained`` gets for a base ref: a catalog entry's files, a downloaded URI, or the ref."""
        from common import catalog

        entry = catalog.resolve(ref, self.settings)
        if entry is not None:
            return entry.path, entry.gguf_file
        if ref.startswith(("file://", "s3://")):
            return str(self._download(ref, "bases")), None
        return ref, None

    def _download(self, uri: str, kind: str) -> Path:
        """A local copy of every object under ``uri``, cached by URI (downloads once, atomically)."""
        dest = self.cache / kind / hashlib.sha256(uri.encode()).hexdigest()[:24]
        if (dest / COMPLETE).is_file():
            return dest
        tmp = Path(tempfile.mkdtemp(dir=self.cache, prefix=".download-"))
        try:
            files = self.store.download_prefix(uri.rstrip("/"), tmp)
            if not files:
                raise NotFound(f"no files under {uri}")
            (tmp / COMPLETE).touch()
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _load_base(self, ref: str) -> tuple[Any, Any]:
        path, gguf = self._location(ref)
        extra = {"gguf_file": gguf} if gguf else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **extra)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, **extra)
        except (OSError, ValueError) as e:
            raise NotFound(f"base model '{ref}' cannot be loaded here: {_first_line(e)}") from e
        return model.to(self.device).eval(), tokenizer  # type: ignore[arg-type]

    def _base(self, ref: str) -> _Loaded:
        if ref in self.bases:
            self.bases.move_to_end(ref)
            return self.bases[ref]
        while len(self.bases) >= self.settings.inference_max_loaded_bases:
            evicted, _ = self.bases.popitem(last=False)
            log.info("unloaded base %s (least recently used)", evicted)
        started = time.monotonic()
        model, tokenizer = self._load_base(ref)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.bases[ref] = loaded = _Loaded(model, tokenizer, int(context))
        log.info("loaded base %s in %.1fs", ref, time.monotonic() - started)
        return loaded

    def _attach(self, base: _Loaded, uri: str) -> str:
        name = "a" + hashlib.sha256(uri.encode()).hexdigest()[:16]
        if name in base.adapters:
            base.adapters.move_to_end(name)
            return name
        local = self._download(uri, "adapters")
        if not (local / ADAPTER_CONFIG).is_file():
            raise NotFound(f"no LoRA adapter ({ADAPTER_CONFIG}) under {uri}")
        try:
            if base.has_adapters:
                base.model.load_adapter(str(local), adapter_name=name)
            else:
                base.model = PeftModel.from_pretrained(base.model, str(local), adapter_name=name)
                base.model.eval()
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise Unprocessable(f"the adapter at {uri} does not fit its base model: {_first_line(e)}") from e
        base.adapters[name] = uri
        base.model.set_adapter(name)
        while len(base.adapters) > self.settings.inference_max_adapters:
            evicted, evicted_uri = base.adapters.popitem(last=False)
            base.model.delete_adapter(evicted)
            log.info("detached adapter %s (least recently used)", evicted_uri)
        return name

    def load(self, model: ModelRef) -> None:
        base = self._base(model.base_model)
        if model.adapter_uri:
            self._attach(base, model.adapter_uri)

    def loaded(self) -> dict[str, list[str]]:
        return {ref: list(b.adapters.values()) for ref, b in self.bases.items()}

    # --------------------------------------------------------------- generation

    def _prompt_ids(self, base: _Loaded, request: GenerationRequest) -> torch.Tensor:
        tok = base.tokenizer
        if request.messages is not None:
            if not tok.chat_template:
                raise Unprocessable(f"model '{request.model.base_model}' has no chat template; use /v1/completions")
            text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tok(request.prompt or "", return_tensors="pt").input_ids
        if ids.shape[1] >= base.context_length:
            raise Unprocessable(f"the prompt is {ids.shape[1]} tokens; this model's context is {base.context_length}")
        return ids.to(self.device)

    def stream(self, request: GenerationRequest, cancelled: Callable[[], bool]) -> Iterator[Event]:
        base = self._base(request.model.base_model)
        adapter = self._attach(base, request.model.adapter_uri) if request.model.adapter_uri else None
        ids = self._prompt_ids(base, request)
        prompt_len = int(ids.shape[1])
        max_new = min(request.max_tokens, base.context_length - prompt_len)
        yield Started(prompt_tokens=prompt_len)

        tok, streamer, stop_hit = base.tokenizer, _TokenQueue(), threading.Event()
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new, "streamer": streamer, "pad_token_id": tok.pad_token_id,
            "min_new_tokens": min(request.min_tokens, max_new),
            "stopping_criteria": StoppingCriteriaList([_Until(lambda: stop_hit.is_set() or cancelled())]),
        }
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                if request.seed is not None:
                    torch.manual_seed(request.seed)
                if adapter:
                    base.model.set_adapter(adapter)
                scope = base.model.disable_adapter() if adapter is None and base.has_adapters else contextlib.nullcontext()
                with scope, torch.inference_mode():
                    base.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(e)
                streamer.end()

        started = time.monotonic()
        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        tokens: list[int] = []
        emitted = 0
        text = ""
        stops = request.stop
        for piece in streamer.pieces():
            tokens.extend(piece)
            text = tok.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # half of a multi-byte character; wait for the rest
            cut = min((i for s in stops if (i := text.find(s, max(0, emitted - len(s)))) >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                stop_hit.set()
                break
            safe = len(text) - _held_back(text, stops)
            if safe > emitted:
                yield Text(text[emitted:safe])
                emitted = safe
        thread.join()
        if failure:
            raise failure[0]
        if len(text) > emitted:
            yield Text(text[emitted:])
        eos = _eos_ids(base)
        ended = stop_hit.is_set() or bool(tokens and tokens[-1] in eos) or len(tokens) < max_new
        reason = "stop" if ended else "length"
        yield Finished(reason, len(tokens), time.monotonic() - started)

    # ------------------------------------------------------------------ export

    def export(self, job: ExportJob) -> Exported:
        if not job.model.adapter_uri:
            raise Unprocessable("only a fine-tuned model (an adapter on a base) can be exported")
        started = time.monotonic()
        adapter_dir = self._download(job.model.adapter_uri, "adapters")
        model, tokenizer = self._load_base(job.model.base_model)  # a private copy: merging changes weights
        try:
            merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise Unprocessable(f"the adapter at {job.model.adapter_uri} does not fit its base: {_first_line(e)}") from e
        with tempfile.TemporaryDirectory(dir=self.cache, prefix=".export-") as tmp:
            merged.to("cpu").save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
            files = self.store.upload_dir(Path(tmp), job.output_uri)
        return Exported(job.output_uri, files, size, time.monotonic() - started)


def _eos_ids(base: _Loaded) -> set[int]:
    eos = base.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if base.tokenizer.eos_token_id is not None:
        ids.add(base.tokenizer.eos_token_id)
    return ids


def _first_line(e: BaseException) -> str:
    if isinstance(e, TrainyardError):
        return str(e.detail)
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
