"""Datamover service settings."""

from __future__ import annotations

from shared.settings import CommonSettings


class DatamoverSettings(CommonSettings):
    port: int = 8003
