"""``python -m services.datamover``: serve the datamover service."""

from services.datamover.settings import DatamoverSettings
from shared.runtime import serve

if __name__ == "__main__":
    serve("services.datamover.app:create_app", DatamoverSettings())
