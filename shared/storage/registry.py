"""The configured tiers of one process (``StorageSettings.tiers``), each behind its own
circuit breaker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.errors import DependencyUnavailable, Invalid, NotFound
from shared.resilience import CircuitBreaker, CircuitOpen, RetryPolicy, retry
from shared.settings import StorageSettings, TierSettings
from shared.storage.tiers import FileTier, Tier, is_transient
from shared.telemetry import watch_breaker

T = TypeVar("T")


def make_tier(name: str, settings: TierSettings, *, fsync: bool) -> Tier:
    if settings.kind == "file":
        return FileTier(name, settings, fsync=fsync)
    if settings.kind == "s3":
        from shared.storage.s3 import S3Tier

        return S3Tier(name, settings)
    raise ValueError(f"tier {name!r}: unsupported kind {settings.kind!r} (file, s3)")


class Storage:
    """Every tier by name. ``call`` runs one storage operation through the tier's breaker
    (and retries, given a policy); ``guard`` does the same for the gateway, where an outage
    is a 503 with ``Retry-After`` instead of a retry."""

    def __init__(
        self,
        settings: StorageSettings,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.tiers: dict[str, Tier] = {
            name: make_tier(name, ts, fsync=settings.fsync) for name, ts in settings.tiers().items()
        }
        self.breakers = {  # state in /metrics as stratus_circuit_state{circuit="storage.<tier>"}
            name: watch_breaker(
                CircuitBreaker(
                    f"storage.{name}",
                    failure_threshold=failure_threshold,
                    reset_timeout_s=reset_timeout_s,
                    is_failure=is_transient,
                )
            )
            for name in self.tiers
        }

    @property
    def chunk_bytes(self) -> int:
        return self.settings.chunk_bytes

    def tier(self, name: str) -> Tier:
        tier = self.tiers.get(name)
        if tier is None:
            raise Invalid(
                f"tier {name!r} is not configured",
                errors=[{"loc": ["query", "tier"], "msg": f"one of {sorted(self.tiers)}"}],
            )
        return tier

    async def call(
        self,
        tier: str,
        fn: Callable[[], Awaitable[T]],
        *,
        policy: RetryPolicy | None = None,
        what: str = "storage call",
    ) -> T:
        breaker = self.breakers[tier]
        if policy is None:
            return await breaker.call(fn)
        return await retry(
            fn, policy=policy, is_transient=is_transient, breaker=breaker, what=f"{tier}: {what}"
        )

    async def guard(self, tier: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One call for a request. Nothing a tier raises leaves as itself: a missing object
        is a 404, any other storage error ``DependencyUnavailable`` (503: an outage, a full
        disk, a tier that refuses access), so that no storage error reaches the request's
        database breaker or becomes a 500. Name clashes are the catalogue's 409, decided
        before any tier is written (``catalog.claim_name``)."""
        try:
            return await self.breakers[tier].call(fn)
        except CircuitOpen as exc:
            raise DependencyUnavailable(
                f"storage tier {tier!r} is unavailable", retry_after=exc.retry_after
            ) from exc
        except FileNotFoundError as exc:
            raise NotFound(f"the object is missing on tier {tier!r}") from exc
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, OSError):
                raise DependencyUnavailable(
                    f"storage tier {tier!r} is unavailable", retry_after=2.0
                ) from exc
            raise

    async def close(self) -> None:
        for tier in self.tiers.values():
            await tier.close()
