"""The client's exceptions, one hierarchy (as httpx has): catch ConveyorError for "any API problem".

Messages are meant for the user as they are, and never hold a secret, a token or a credential-bearing URL.
"""

from __future__ import annotations

from conveyor.errors import ConveyorError


class ApiCallError(ConveyorError):
    """The server answered a call with a result code other than 200 (or with something that is no answer)."""

    def __init__(self, endpoint: str, code: int, subcode: int, msg: str):
        super().__init__(endpoint, code, subcode, msg)
        self.endpoint = endpoint
        self.code = code
        self.subcode = subcode
        self.msg = msg

    def __str__(self) -> str:
        return f"{self.endpoint} failed ({self.code}/{self.subcode}): {self.msg}"


class AuthError(ApiCallError):
    """Login refused, or a call still refused (401) after a fresh login."""

    def __init__(self, endpoint: str, code: int, subcode: int, msg: str, *, advice: str = ""):
        super().__init__(endpoint, code, subcode, msg)
        self.advice = advice

    def __str__(self) -> str:
        return self.advice or super().__str__()


class ServerUnreachable(ConveyorError):
    """No HTTP answer at all: connection refused, unknown host, timeout, connection dropped."""

    def __init__(self, host: str, reason: str):
        super().__init__(host, reason)
        self.host = host
        self.reason = reason

    def __str__(self) -> str:
        return (f"Cannot reach the Conveyor server at {self.host} ({self.reason}) — is `conveyor server` running? "
                "Set api.api_server or CLEARML_API_HOST")
