"""``python -m services.worker``: serve a worker."""

from services.worker.settings import WorkerSettings
from shared.runtime import serve

if __name__ == "__main__":
    serve("services.worker.app:create_app", WorkerSettings())
