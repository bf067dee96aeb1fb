"""Keep signed URLs' credentials out of logs.

A signed URL (ours: ``?expires=&sig=``; S3's: ``X-Amz-Signature``) is a credential: whoever reads
it may use it. Access logs print request paths with their query strings, so every API process
installs ``install()`` at start: any query string that carries a signature is logged as
``?<redacted>``.
"""

from __future__ import annotations

import logging
import re

# A query string holding one of these parameters is replaced whole.
SIGNATURE_PARAMS = ("sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token")
_SIGNED_QUERY = re.compile(
    r"\?(?=(?:[^\s\"'<>]*?[&;])?(?:" + "|".join(re.escape(p) for p in SIGNATURE_PARAMS) + r")=)[^\s\"'<>]*",
    re.IGNORECASE,
)
REDACTED = "?<redacted>"
# Loggers that print URLs: uvicorn's access and error logs, httpx's request lines.
LOGGERS = ("uvicorn.access", "uvicorn.error", "httpx")


def redact(text: str) -> str:
    """``text`` with the query string of every signed URL in it replaced."""
    return _SIGNED_QUERY.sub(REDACTED, text) if "?" in text else text


class RedactSignedUrls(logging.Filter):
    """Rewrites a record's message and string arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Attach the filter to each logger once (idempotent: safe in every lifespan)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSignedUrls) for f in logger.filters):
            logger.addFilter(RedactSignedUrls())
