"""The server's JWT: read (never verified: only the server can, and the clients never do), and its refresh time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt


@dataclass(frozen=True)
class Token:
    raw: str
    claims: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def decode(cls, raw: str) -> Token:
        """Raises ValueError when `raw` is not a JWT."""
        try:
            claims = jwt.decode(raw, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise ValueError(str(exc)) from None
        return cls(raw, claims if isinstance(claims, dict) else {})

    def refresh_due(self, threshold_sec: float, now: float | None = None) -> bool:
        """True when fewer than `threshold_sec` seconds are left. A token without `exp` never expires.

        With tokens shorter-lived than the threshold (a 1 h token, a 12 h threshold) the reference agent logs
        in before every call; here the threshold is capped at half the token's lifetime instead."""
        exp = self.claims.get("exp")
        if not isinstance(exp, (int, float)):
            return False
        iat = self.claims.get("iat")
        if isinstance(iat, (int, float)) and exp > iat:
            threshold_sec = min(threshold_sec, (exp - iat) / 2)
        return exp - (time.time() if now is None else now) < threshold_sec
