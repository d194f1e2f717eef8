"""``python -m services.tenant``: serve the tenant service."""

from services.tenant.settings import TenantSettings
from shared.runtime import serve

if __name__ == "__main__":
    serve("services.tenant.app:create_app", TenantSettings())
