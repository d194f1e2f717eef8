"""Tenant service settings."""

from __future__ import annotations

from shared.settings import CommonSettings


class TenantSettings(CommonSettings):
    port: int = 8004
