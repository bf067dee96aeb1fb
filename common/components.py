"""The deployable components (the gateway apps, the trainer services, the inference service), found
through entry points so the core never names them.

Each component is one line in pyproject.toml, pointing at a ``Component`` its own package declares::

    [project.entry-points."trainyard.components"]
    huggingface = "services.huggingface:COMPONENT"

Everything that lists components derives from these lines: ``trainyard serve``, the default
``service_urls``, the ``provider`` values a finetune may name, the local stack. Plugins of the
command line (``trainyard.commands``) and tables holding encrypted secrets (``trainyard.sealed_tables``)
are found the same way.

A source checkout reads its own pyproject.toml (an editable install's metadata goes stale when a line
is added); an installed package reads its metadata.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import metadata
from typing import Any

from common.settings import PROJECT_HOME

GROUP = "trainyard.components"


class Kind(StrEnum):
    gateway = "gateway"  # a gateway app
    trainer = "trainer"  # a trainer service: a ``provider`` users name, a backend jobs load
    inference = "inference"  # the inference service


@dataclass(frozen=True)
class Component:
    """What a package declares about the process it runs. Importing the declaring package must stay
    cheap (no app, no torch): the list is read by every process."""

    app: str  # "module:attribute" of the ASGI app `trainyard serve` runs
    port: int  # default port (`trainyard serve`, the local stack, the default service URLs)
    kind: Kind
    training_type: str = ""  # trainers: sft | dpo, the data their backend trains on
    backend: str = ""  # trainers: "module:Class" of the backend (job specs carry it; see common.trainer)
    name: str = ""  # filled from the entry point's name

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The entry points of ``group``: from the source checkout's pyproject.toml if there is one, else
    from the installed package's metadata."""
    pyproject = PROJECT_HOME / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "trainyard":
            table: dict[str, str] = project.get("entry-points", {}).get(group, {})
            return [metadata.EntryPoint(name, value, group) for name, value in table.items()]
    return list(metadata.entry_points(group=group))


@cache
def components() -> dict[str, Component]:
    """Every component by name, in port order (the order lists and enums show)."""
    found = []
    for ep in entry_points(GROUP):
        declared = ep.load()
        if not isinstance(declared, Component):
            raise TypeError(f"entry point {ep.name} = {ep.value!r} is not a common.components.Component")
        found.append(dataclasses.replace(declared, name=ep.name))
    return {c.name: c for c in sorted(found, key=lambda c: c.port)}


def of_kind(*kinds: Kind) -> list[Component]:
    return [c for c in components().values() if c.kind in kinds]


def trainer_names() -> list[str]:
    return [c.name for c in of_kind(Kind.trainer)]


def default_service_urls() -> dict[str, str]:
    """Where the gateway finds each service on one machine (``trainyard serve`` / ``make up``)."""
    return {c.name: c.local_url for c in of_kind(Kind.trainer, Kind.inference)}


def load(group: str) -> list[Any]:
    """The loaded objects of a plugin group (e.g. ``trainyard.commands``)."""
    return [ep.load() for ep in entry_points(group)]
