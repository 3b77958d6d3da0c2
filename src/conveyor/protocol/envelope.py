"""The `{meta, data}` envelope every answer is wrapped in."""

from __future__ import annotations

import uuid
from typing import Any

API_VERSION = "2.31"  # newest version we serve; real SDKs need >= 2.23 (clearml-wire.md 2.3)
SERVER_VERSION = "2.0.0"  # what `server_version` claims; the SDK gates features on it


def envelope(
    endpoint: str,
    requested_version: str,
    data: dict[str, Any] | None,
    code: int = 200,
    subcode: int = 0,
    msg: str = "OK",
    error_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "meta": {
            "id": uuid.uuid4().hex,
            "trx": uuid.uuid4().hex,
            "endpoint": {"name": endpoint, "requested_version": requested_version, "actual_version": requested_version},
            "result_code": code,
            "result_subcode": subcode,
            "result_msg": msg,
            "error_stack": "",
            "error_data": error_data or {},
        },
        "data": data if data is not None else {},
    }
