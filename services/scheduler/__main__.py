"""``python -m services.scheduler``: serve the scheduler."""

from services.scheduler.settings import SchedulerSettings
from shared.runtime import serve

if __name__ == "__main__":
    serve("services.scheduler.app:create_app", SchedulerSettings())
