"""The HTTP client of the ClearML protocol: `ApiClient(host, key, secret).tasks.get_all(...)`."""

from conveyor.client.api import ApiClient
from conveyor.client.errors import ApiCallError, AuthError, ConveyorError, ServerUnreachable
from conveyor.client.services import SERVICES, Service

__all__ = ["SERVICES", "ApiCallError", "ApiClient", "AuthError", "ConveyorError", "ServerUnreachable", "Service"]
