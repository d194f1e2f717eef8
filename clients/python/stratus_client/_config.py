"""Where the service is and who is calling: arguments first, then the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from stratus_client.errors import ConfigurationError

__version__ = "1.0.0"
USER_AGENT = f"stratus-client/{__version__}"
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    base_url: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT}


def resolve(base_url: str | None, api_key: str | None) -> Target:
    """``base_url`` or ``STRATUS_URL``, ``api_key`` or ``STRATUS_API_KEY``."""
    url = base_url or os.environ.get("STRATUS_URL")
    key = api_key or os.environ.get("STRATUS_API_KEY")
    if not url:
        raise ConfigurationError("no service URL: pass base_url= or set STRATUS_URL")
    if not key:
        raise ConfigurationError("no API key: pass api_key= or set STRATUS_API_KEY")
    return Target(url.rstrip("/"), key)
