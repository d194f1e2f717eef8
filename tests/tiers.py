"""The disk tiers a test's services store datasets on."""

from __future__ import annotations

from pathlib import Path


def disk_tiers(root: Path) -> dict[str, str]:
    """The services' environment for the ``local`` and ``archive`` tiers in ``root``, without
    fsync (a test's files need not outlive a power cut)."""
    return {
        "STRATUS_STORAGE__LOCAL__ROOT": str(root / "local"),
        "STRATUS_STORAGE__ARCHIVE__ROOT": str(root / "archive"),
        "STRATUS_STORAGE__FSYNC": "false",
    }
