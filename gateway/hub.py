"""Does a model id exist on the hub? Asked when a finetune names a hub id outside the catalog, so a
typo fails at create time rather than when its job starts.

``huggingface_hub.model_info`` (torch-free) with a short timeout; ``HF_ENDPOINT`` points it at a
mirror or a private hub, ``HF_HUB_OFFLINE=1`` makes every id unreachable. Operators whose jobs reach
a hub the gateway cannot turn the check off (``TRAINYARD_MODEL_HUB_CHECK=false``).
"""

from __future__ import annotations

import logging
from enum import StrEnum

log = logging.getLogger("trainyard.gateway.hub")

HUB_TIMEOUT = 5.0  # seconds one lookup may take before the hub counts as unreachable


class HubAnswer(StrEnum):
    found = "found"  # public, or private/gated and visible with the token given
    missing = "missing"  # the hub answered: no such model (or not visible without a token)
    unreachable = "unreachable"  # no answer: offline, DNS, timeout, a hub error


def lookup(model_id: str, token: str | None = None, timeout: float = HUB_TIMEOUT) -> HubAnswer:
    """What the hub says about ``model_id`` (a hub-shaped id)."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        HTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        model_info(model_id, token=token or False, timeout=timeout)
    except GatedRepoError:  # it exists; the job needs a token with access
        return HubAnswer.found
    except (RepositoryNotFoundError, HFValidationError):
        return HubAnswer.missing
    except (OfflineModeIsEnabled, HTTPError, OSError) as e:
        log.info("hub lookup of %s: no answer (%s)", model_id, type(e).__name__)
        return HubAnswer.unreachable
    return HubAnswer.found
