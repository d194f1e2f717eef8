"""``python -m services.gateway``: serve the gateway."""

from services.gateway.settings import GatewaySettings
from shared.runtime import serve

if __name__ == "__main__":
    serve("services.gateway.app:create_app", GatewaySettings())
