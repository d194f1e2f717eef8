"""Scheduler settings: background loops each have ``enabled`` and an interval."""

from __future__ import annotations

from shared.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    port: int = 8001
    dispatch_enabled: bool = True
    dispatch_interval_s: float = 0.5
    # Jobs sent to a device queue beyond the live workers' slots, as a multiple of the slots:
    # a little slack hides the dispatch round trip without letting workers hoard jobs.
    dispatch_slack: float = 4.0
    dispatch_batch: int = 500
    reaper_enabled: bool = True
    reaper_interval_s: float = 2.0
    worker_ttl_s: float = 15.0
    redispatch_after_s: float = 60.0
    # Fair share: CPU usage decays with this half-life; this many CPU seconds weigh like one
    # job in flight when slots are shared between tenants.
    usage_half_life_s: float = 3600.0
    usage_scale_s: float = 60.0
