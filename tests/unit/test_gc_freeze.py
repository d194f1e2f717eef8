"""A service's start leaves its objects in the collector's permanent generation."""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from shared import runtime
from shared.settings import CommonSettings


@pytest.fixture
def factory_module() -> Iterator[list[object]]:
    """``stratus_gc_probe:create``, a factory that makes an app of many objects."""
    made: list[object] = []

    def create() -> Any:
        app = [{"route": i} for i in range(10_000)]
        made.append(app)
        return app

    module = types.ModuleType("stratus_gc_probe")
    module.create = create  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield made
    del sys.modules[module.__name__]
    gc.unfreeze()


def test_serve_freezes_what_the_app_factory_built(
    factory_module: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:  # uvicorn calls the factory
        served["factory"] = options["factory"]
        served["app"] = app()

    monkeypatch.setattr(uvicorn, "run", run)
    gc.unfreeze()
    before = gc.get_freeze_count()
    runtime.serve("stratus_gc_probe:create", CommonSettings())
    assert served["factory"] is True
    assert served["app"] is factory_module[0]  # the factory's app is the one served
    assert gc.get_freeze_count() >= before + 10_000  # its objects are frozen, not scanned
