"""Webhooks' rules, shared by the gateway (checks at submit, the secret) and the scheduler
(checks again at delivery, signing): which destinations may be called, how a delivery is
signed, and how a tenant's secret is kept.

A destination is refused when its host is, or resolves to, an address that is not public
(private, loopback, link-local, multicast, reserved, unspecified, shared; an IPv4-mapped IPv6
address is judged as its IPv4 address) unless the operator allows it
(``STRATUS_WEBHOOKS__ALLOW``: CIDRs, and host names trusted whatever they resolve to). The
scheduler resolves again before each delivery and connects to the address it checked, so a
name that resolves to another address by then (DNS rebinding) cannot reach a refused one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.settings import WebhookSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

EVENTS = ("final", "state")
SIGNATURE_HEADER = "Stratus-Signature"
DELIVERY_HEADER = "Stratus-Delivery"
MAX_URL = 2048


class Refused(ValueError):
    """A destination that may not be called; the message says why (never a secret)."""


@dataclass(frozen=True)
class Allowed:
    """The operator's exceptions (``STRATUS_WEBHOOKS__ALLOW``)."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Allowed:
        networks: list[Network] = []
        hosts: set[str] = set()
        for item in (i.strip() for i in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def address(self, address: Address) -> bool:
        return any(address in n for n in self.networks)


@dataclass(frozen=True)
class Destination:
    """A checked URL: its parts, and (once resolved) the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def url_for(self, address: Address) -> str:
        """The URL with ``address`` in place of the host: what is connected to."""
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{host}:{self.port}{self.target}"


def parse_url(url: str) -> Destination:
    """The URL's parts; ``Refused`` for anything but a plain http(s) URL with a host."""
    if len(url) > MAX_URL:
        raise Refused(f"the URL is longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused("not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused("the URL must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise Refused("the URL may not carry a user or password")
    host = (parts.hostname or "").rstrip(".")
    if not host or any(c.isspace() for c in url):
        raise Refused("the URL has no host")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return Destination(url, scheme, host, port or (443 if scheme == "https" else 80), target)


def public(address: Address) -> bool:
    """Whether ``address`` is a public unicast address (IPv4-mapped IPv6: its IPv4 one; 6to4
    and Teredo: the IPv4 one they carry too)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return public(address.ipv4_mapped)
        if address.sixtofour is not None and not public(address.sixtofour):
            return False
        if address.teredo is not None and not all(public(a) for a in address.teredo):
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _not_allowed(dest: Destination) -> str:
    # One answer for a name that does not resolve and one that resolves to a refused address,
    # without the address: the gateway must not tell what internal names exist or resolve to.
    return f"the destination {dest.host!r} does not resolve to an allowed address"


async def resolve(dest: Destination, allowed: Allowed, *, timeout_s: float) -> list[Address]:
    """The addresses ``dest`` may be reached at (each one allowed), the first to connect to;
    ``Refused`` when it does not resolve, or when any address it resolves to is refused."""
    address = literal(dest.host)
    if address is not None:
        found = [address]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(
                    dest.host, dest.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise Refused(_not_allowed(dest)) from exc
        found = list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos))
        if not found:
            raise Refused(_not_allowed(dest))
    if dest.host.lower() in allowed.hosts:
        return found
    for a in found:
        if not public(a) and not allowed.address(a):
            raise Refused(_not_allowed(dest))
    return found


async def check_url(url: str, settings: WebhookSettings) -> Destination:
    """``url`` parsed and resolved to allowed addresses only, or ``Refused``."""
    dest = parse_url(url)
    allowed = Allowed.parse(settings.allow)
    await resolve(dest, allowed, timeout_s=settings.resolve_timeout_s)
    return dest


# Signing ------------------------------------------------------------------------------------


def new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Stratus-Signature`` header: ``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does: the header's ``v1`` is the HMAC of its ``t`` and the body."""
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


# The secret at rest -------------------------------------------------------------------------
# A signing secret cannot be stored as a hash (it is needed to sign). With an operator key it
# is sealed with AES-GCM (the tenant's id as associated data, so a sealed secret copied to
# another tenant's row does not open); without one it is kept as it is (version byte 0).

_PLAIN, _SEALED = b"\x00", b"\x01"


class SecretUnreadable(Exception):
    """A sealed secret and no (or another) operator key."""


def _key(operator_key: str) -> bytes:
    return hashlib.sha256(b"stratus-webhook-secret:" + operator_key.encode()).digest()


def seal(secret: str, tenant_id: uuid.UUID, operator_key: str) -> bytes:
    if not operator_key:
        return _PLAIN + secret.encode()
    nonce = os.urandom(12)
    return (
        _SEALED
        + nonce
        + AESGCM(_key(operator_key)).encrypt(nonce, secret.encode(), tenant_id.bytes)
    )


def unseal(sealed: bytes, tenant_id: uuid.UUID, operator_key: str) -> str:
    kind, rest = sealed[:1], sealed[1:]
    if kind == _PLAIN:
        return rest.decode()
    if kind != _SEALED or not operator_key:
        raise SecretUnreadable("the webhook secret is sealed and no operator key is set")
    try:
        return AESGCM(_key(operator_key)).decrypt(rest[:12], rest[12:], tenant_id.bytes).decode()
    except Exception as exc:  # InvalidTag: another key
        raise SecretUnreadable("the webhook secret does not open with the operator key") from exc
