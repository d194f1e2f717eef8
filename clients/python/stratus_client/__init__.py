"""Python client of the Stratus HPC job service, REST API version 1.

``Client`` (sync) and ``AsyncClient`` (asyncio) have the same methods; configuration comes
from their arguments or from ``STRATUS_URL`` and ``STRATUS_API_KEY``."""

from stratus_client._config import __version__
from stratus_client.aio import AsyncClient
from stratus_client.client import Client
from stratus_client.errors import ApiError, ConfigurationError, StratusError, WaitTimeout
from stratus_client.models import (
    FINAL_STATES,
    ApiKey,
    ArraySpec,
    ArrayStatus,
    Attempt,
    Dataset,
    DeadLetters,
    Event,
    Job,
    JobState,
    Kernel,
    KeyInfo,
    Migration,
    Quotas,
    QuotaUse,
    Receipt,
    Tenant,
    TenantSelf,
    Transition,
    Usage,
    WebhookSecret,
    WorkerPool,
    Workflow,
)
from stratus_client.retry import NO_RETRIES, RetryEvent, RetryPolicy

API_VERSION = "v1"

__all__ = [
    "API_VERSION",
    "FINAL_STATES",
    "NO_RETRIES",
    "ApiError",
    "ApiKey",
    "ArraySpec",
    "ArrayStatus",
    "AsyncClient",
    "Attempt",
    "Client",
    "ConfigurationError",
    "Dataset",
    "DeadLetters",
    "Event",
    "Job",
    "JobState",
    "Kernel",
    "KeyInfo",
    "Migration",
    "QuotaUse",
    "Quotas",
    "Receipt",
    "RetryEvent",
    "RetryPolicy",
    "StratusError",
    "Tenant",
    "TenantSelf",
    "Transition",
    "Usage",
    "WaitTimeout",
    "WebhookSecret",
    "WorkerPool",
    "Workflow",
    "__version__",
]
