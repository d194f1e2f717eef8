"""API keys: 256-bit random secrets with a visible prefix, stored as HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk_live_"
SCOPES = ("jobs:read", "jobs:write", "data:read", "data:write")
VISIBLE = len(KEY_PREFIX) + 6  # what is shown and stored in clear: sk_live_ + 6 chars


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 32 bytes = 256 bits


def visible_prefix(key: str) -> str:
    return key[:VISIBLE]


def hash_key(key: str, secret: str) -> bytes:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).digest()


def looks_like_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and 40 <= len(key) <= 100


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)
