"""Credentials and tokens: secrets are stored hashed; tokens are HS256 JWTs with the claims ClearML clients read."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import threading
import time
from dataclasses import dataclass

import jwt
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from conveyor import __version__
from conveyor.protocol import errors
from conveyor.protocol.envelope import API_VERSION, SERVER_VERSION
from conveyor.protocol.ids import new_id
from conveyor.server.store import Store
from conveyor.server.store import schema as s

COMPANY_ID = "d1bd92a3b039400cbafc60a7a5b1e52b"
COMPANY_NAME = "conveyor"
# what our agent may use beyond ClearML's protocol (ARCHITECTURE decision 2)
FEATURES = ["long_poll", "worker_state", "timeline"]
_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass
class Identity:
    """Who a call acts as: the user behind its credential, and that credential."""

    user: str
    user_name: str
    company: str
    access_key: str
    role: str = "user"  # "admin" or "user" (see ownership.py)


def hash_secret(secret: str) -> str:
    # Secrets are 256-bit random strings, so a fast hash is as strong as a slow one here.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_credentials() -> tuple[str, str]:
    access_key = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(24))
    secret_key = secrets.token_urlsafe(36)
    return access_key, secret_key


def signing_key(store: Store) -> str:
    """The JWT signing key, shared through the database so that every server process accepts every token."""
    with store.write() as conn:
        row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == "jwt_secret")).first()
        if row:
            return row[0]
        key = secrets.token_hex(32)
        conn.execute(s.meta.insert().values(key="jwt_secret", value=key))
        return key


def _active_credentials(conn: Connection, access_key: str | None = None) -> dict[str, Identity]:
    """Valid credentials → who they act as. A credential whose user is gone acts as nobody."""
    c, u = s.credentials.c, s.users.c
    query = (select(c.access_key, c.user_id, u.name, u.role).select_from(s.credentials.join(s.users, u.id == c.user_id))
             .where(c.revoked.is_(None)))
    if access_key is not None:
        query = query.where(c.access_key == access_key)
    return {r.access_key: Identity(r.user_id, r.name, COMPANY_ID, r.access_key, r.role) for r in conn.execute(query)}


class Authenticator:
    """Issues and checks tokens. Revocations and role changes reach other server processes within `refresh_sec`."""

    def __init__(self, store: Store, key: str, token_ttl_sec: int, refresh_sec: float = 2.0):
        self.store = store
        self.key = key
        self.token_ttl_sec = token_ttl_sec
        self.refresh_sec = refresh_sec
        self._identities: dict[str, Identity] = {}  # valid access key → who it acts as, re-read every refresh_sec
        self._identities_at = 0.0
        self._verified: dict[str, tuple[float, str]] = {}  # token → (exp, access key); skips re-verifying
        self._lock = threading.Lock()

    # --- login -------------------------------------------------------------------------------------------
    def login(self, authorization: str | None, expiration_sec: int | None) -> str:
        if not authorization:
            raise errors.unauthorized(
                "Missing credentials: send Authorization: Basic base64(access_key:secret_key)", 20)
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":  # refresh with a still-valid token
            return self.issue(self.verify(authorization), expiration_sec)
        if scheme.lower() != "basic":
            raise errors.unauthorized("Unsupported authorization scheme: use Basic or Bearer", 21)
        access_key, identity = self._basic(value)
        with self.store.write() as conn:
            conn.execute(
                update(s.credentials).where(s.credentials.c.access_key == access_key).values(last_used=time.time())
            )
        return self.issue(identity, expiration_sec)

    def _basic(self, value: str) -> tuple[str, Identity]:
        """The access key and identity of a Basic authorization's `access_key:secret_key`."""
        try:
            access_key, _, secret_key = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:  # not base64, or not UTF-8 once decoded
            raise errors.unauthorized("Malformed Basic authorization header", 21) from None
        with self.store.read() as conn:
            row = conn.execute(
                select(s.credentials.c.secret_hash).where(s.credentials.c.access_key == access_key)
            ).first()
            identity = _active_credentials(conn, access_key).get(access_key)
        if not row or identity is None or not hmac.compare_digest(row.secret_hash, hash_secret(secret_key)):
            raise errors.unauthorized("Invalid credentials: the access key and secret were refused", 22)
        return access_key, identity

    def issue(self, identity: Identity, expiration_sec: int | None) -> str:
        now = int(time.time())
        ttl = self.token_ttl_sec if not expiration_sec else max(60, min(int(expiration_sec), self.token_ttl_sec))
        claims = {
            "identity": {
                "user": identity.user,
                "company": identity.company,
                "role": identity.role,
                "user_name": identity.user_name,
                "company_name": COMPANY_NAME,
            },
            "session_id": new_id(),
            "env": "prod",
            "iat": now,
            "exp": now + ttl,
            "api_version": API_VERSION,
            "server_version": SERVER_VERSION,
            "server_build": f"conveyor-{__version__}",
            "feature_set": "basic",
            "conveyor_features": FEATURES,
            "key": identity.access_key,
        }
        return jwt.encode(claims, self.key, algorithm="HS256")

    # --- every call ----------------------------------------------------------------------------------------
    def known(self, authorization: str | None) -> Identity | None:
        """The identity `verify` would answer, when answering needs no read of the database; else None (then call
        `verify`, off the event loop on PostgreSQL: its reads could hold up every other call)."""
        scheme, _, token = (authorization or "").partition(" ")
        cached = self._verified.get(token) if scheme.lower() == "bearer" else None
        now = time.time()
        if cached is None or cached[0] <= now or now - self._identities_at > self.refresh_sec:
            return None
        return self._identities.get(cached[1])

    def verify(self, authorization: str | None) -> Identity:
        if not authorization:
            raise errors.unauthorized(
                "Missing credentials: log in with auth.login and send Authorization: Bearer <token>", 20)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "basic":  # as ClearML's server: any call may carry the key and secret (`curl --user`)
            return self._basic(token)[1]
        if scheme.lower() != "bearer" or not token:
            raise errors.unauthorized("Missing token: send Authorization: Bearer <token> (get one from auth.login)", 20)
        now = time.time()
        cached = self._verified.get(token)
        if cached is None:
            try:
                claims = jwt.decode(token, self.key, algorithms=["HS256"], options={"require": ["exp"]})
            except jwt.ExpiredSignatureError:
                raise errors.unauthorized("Token expired: log in again with auth.login", 23) from None
            except jwt.InvalidTokenError:
                raise errors.unauthorized("Invalid token: log in again with auth.login", 24) from None
            # Who the caller is comes from its credential's row, not from the claims: a role change or a revocation
            # applies to tokens already issued, and a token naming no valid credential acts as nobody.
            cached = (float(claims["exp"]), str(claims.get("key") or ""))
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[token] = cached
        exp, access_key = cached
        if exp <= now:
            raise errors.unauthorized("Token expired: log in again with auth.login", 23)
        identity = self.identity_of(access_key, now)
        if identity is None:
            raise errors.unauthorized("Credentials revoked: create new credentials and log in again", 25)
        return identity

    def identity_of(self, access_key: str, now: float) -> Identity | None:
        if now - self._identities_at > self.refresh_sec:
            with self._lock:
                if now - self._identities_at > self.refresh_sec:
                    with self.store.read() as conn:
                        self._identities = _active_credentials(conn)
                    self._identities_at = now
        identity = self._identities.get(access_key)
        if identity is None and access_key:  # made since the last refresh (maybe by another server process)
            with self.store.read() as conn:
                identity = _active_credentials(conn, access_key).get(access_key)
            if identity is not None:
                self._identities[access_key] = identity
        return identity

    def forget_credentials(self) -> None:
        """Re-read credentials and roles on the next call (this process just revoked a key or changed a user)."""
        self._identities_at = 0.0
