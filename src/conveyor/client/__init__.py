"""The HTTP client of the ClearML protocol: `ApiClient(host, key, secret).tasks.get_all(...)`."""

from conveyor.client.api import ApiClient
from conveyor.client.errors import ApiCallError, AuthError, ClientError, ServerUnreachable
from conveyor.client.services import SERVICES, Service
from conveyor.errors import ConveyorError

__all__ = ["SERVICES", "ApiCallError", "ApiClient", "AuthError", "ClientError", "ConveyorError", "ServerUnreachable",
           "Service"]
