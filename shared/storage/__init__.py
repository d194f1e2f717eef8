"""Tiered dataset storage: names, checksums, the tier interface on fsspec, and the catalogue
of dataset rows and migrations in PostgreSQL."""

from shared.storage.checksum import Hasher, new_hasher
from shared.storage.names import local_dataset_path, object_key, validate_name
from shared.storage.registry import Storage
from shared.storage.tiers import Tier, Upload

__all__ = [
    "Hasher",
    "Storage",
    "Tier",
    "Upload",
    "local_dataset_path",
    "new_hasher",
    "object_key",
    "validate_name",
]
