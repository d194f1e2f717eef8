"""A minimal app for tests/integration/test_keep_alive.py, served by ``shared.runtime.serve``
as every service is."""

from __future__ import annotations

import sys

from fastapi import FastAPI

from shared.runtime import serve
from shared.settings import CommonSettings


def create() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


if __name__ == "__main__":
    serve("tests.integration.keep_alive_app:create", CommonSettings(port=int(sys.argv[1])))
