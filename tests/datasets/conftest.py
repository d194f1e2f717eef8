"""Dataset API tests: the gateway in-process with real tiers (directories and moto_server)."""

from tests.datamover.harness import api, gateway, moto, storage, tiers_root

__all__ = ["api", "gateway", "moto", "storage", "tiers_root"]
