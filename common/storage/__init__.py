"""Objects addressed by ``file://`` and ``s3://`` URIs behind one ``ObjectStore``.

``store`` holds the front object callers use; ``local`` and ``s3`` the two backends it picks
from by scheme; ``base`` the URI grammar and the protocol a backend follows.
"""

from common.storage.base import CHUNK_SIZE, SCHEMES, ObjectInfo, check_segments, parse_uri
from common.storage.local import TMP_PREFIX
from common.storage.s3 import DEFAULT_PART_SIZE, MIN_PART_SIZE
from common.storage.store import ObjectStore

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_PART_SIZE",
    "MIN_PART_SIZE",
    "SCHEMES",
    "TMP_PREFIX",
    "ObjectInfo",
    "ObjectStore",
    "check_segments",
    "parse_uri",
]
