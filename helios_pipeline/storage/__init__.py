"""Where a render's files live: a local folder or an S3 prefix, behind one small interface.

Nothing here knows Dagster. The Dagster resource (``dagster_defs/storage.py``) wraps it, and the
library and the CLI can use it directly.
"""

from helios_pipeline.storage.location import StorageLocation, parse_location
from helios_pipeline.storage.store import ObjectInfo, StorageError, StorageFullError, Store, open_store

__all__ = [
    "ObjectInfo",
    "StorageError",
    "StorageFullError",
    "StorageLocation",
    "Store",
    "open_store",
    "parse_location",
]
