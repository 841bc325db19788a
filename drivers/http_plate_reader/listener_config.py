"""Settings of the shared HTTP push listener and of each endpoint's authentication.

Generic on purpose: any push driver (plate cameras today, other cameras later) embeds `Auth`,
`allow_sources` and `ListenerSettings` in its device config and hands them to the listener.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

CONSENT_FIELD = "i_understand_anyone_on_the_network_can_push"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoAuth(_Strict):
    """No authentication. On a non-loopback address this needs `allow_sources` or explicit consent."""

    mode: Literal["none"] = "none"
    i_understand_anyone_on_the_network_can_push: bool = Field(
        False,
        description="Consent to serve a non-loopback address without authentication: anyone who can reach"
        " the port can push (for a plate camera: open the barrier)",
    )


class TokenAuth(_Strict):
    """A shared token the device sends in a header."""

    mode: Literal["token"]
    header: str = "X-Auth-Token"
    token: SecretStr = Field(min_length=8)


class UrlTokenAuth(_Strict):
    """A token in the URL, for devices that cannot add headers (Zhenshi).

    Accepted as the last path segment (`<path>/<token>`) or as the query parameter `param`
    (`<path>?token=<token>`). Weaker than a header: URLs end up in proxy and device logs.
    The listener never logs it.
    """

    mode: Literal["url_token"]
    token: SecretStr = Field(min_length=16)
    param: str = Field("token", pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("token")
    @classmethod
    def _url_safe(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[A-Za-z0-9._~-]+", value.get_secret_value()):
            raise ValueError("token must be URL-safe: letters, digits and . _ ~ - only")
        return value


class HmacAuth(_Strict):
    """HMAC-SHA256 over `<timestamp>.<body>`, hex in `header`; each signature is accepted once."""

    mode: Literal["hmac"]
    header: str = "X-Signature"
    timestamp_header: str = "X-Timestamp"
    secret: SecretStr = Field(min_length=8)
    max_skew_s: float = Field(300.0, gt=0)


class BasicAuth(_Strict):
    """HTTP Basic auth: the password crosses the network in clear."""

    mode: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr = Field(min_length=1)


DigestAlgorithm = Literal["SHA-256", "MD5"]


def _md5_only() -> list[DigestAlgorithm]:
    return ["MD5"]


class DigestAuth(_Strict):
    """HTTP Digest (RFC 7616, qop=auth), as Hikvision and Dahua firmwares offer it."""

    mode: Literal["digest"]
    username: str = Field(min_length=1)
    password: SecretStr = Field(min_length=1)
    realm: str = Field("courtyard", pattern=r'^[^"\\]+$')
    algorithms: list[DigestAlgorithm] = Field(
        default_factory=_md5_only,
        min_length=1,
        description="Challenges offered, preferred first. Many clients read only the first one: put the"
        " algorithm the device speaks first (SHA-256 where the firmware has it)",
    )
    nonce_ttl_s: float = Field(300.0, gt=0, description="A nonce older than this is stale; the client re-auths")


Auth = Annotated[
    NoAuth | TokenAuth | UrlTokenAuth | HmacAuth | BasicAuth | DigestAuth, Field(discriminator="mode")
]

SourceNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ListenerSettings(_Strict):
    """Limits of one listener (one address and port). Endpoints sharing it must agree on these."""

    max_connections: int = Field(
        256,
        ge=1,
        description="Open connections in total; lowered at start to stay `reserve_fds` below the process's"
        " descriptor limit (RLIMIT_NOFILE)",
    )
    max_connections_per_source: int = Field(16, ge=1, description="Open connections from one address")
    reserve_fds: int = Field(
        256,
        ge=0,
        description="Descriptors kept free for device links, sinks, the outbox and media files",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection must deliver a complete request head this soon after opening or"
        " after its previous reply; else it is closed"
    )
    body_timeout_s: float = Field(10.0, gt=0, description="The whole body must arrive within this")
    max_body_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Body bytes buffered across all requests at once; beyond: 503 with Retry-After",
    )
    max_requests_per_s: float = Field(500.0, gt=0, description="Requests per second over all sources and paths")
    requests_burst: int = Field(1000, ge=1)
    replay_cache_size: int = Field(65_536, ge=16, description="HMAC signatures remembered for replay refusal")
    access_log: bool = Field(False, description="Log one line per request (URL tokens redacted)")


def is_loopback_host(host: str) -> bool:
    """True when `host` names only the loopback interface (hostnames other than localhost are not)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def unauthenticated_network_problem(host: str, auth: object, allow_sources: list[SourceNetwork]) -> str | None:
    """The one-line reason a listener on `host` must not serve this endpoint, or None."""
    if not isinstance(auth, NoAuth) or allow_sources or is_loopback_host(host):
        return None
    if auth.i_understand_anyone_on_the_network_can_push:
        return None
    return (
        f"listen_host {host} is reachable from the network and auth is none: set auth (token, url_token, digest,"
        f" hmac or basic) or allow_sources, or consent with auth: {{mode: none, {CONSENT_FIELD}: true}}"
    )
