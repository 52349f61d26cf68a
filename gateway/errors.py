"""The gateway's error tree; every refusal a caller sees is one of these.

    GatewayError                    status + JSON body, rendered by the one error boundary
    ├── BadRequest                  400: malformed path, headers or JSON
    ├── Unauthenticated             401: no, malformed, unknown, revoked or forged credential
    ├── NotFound                    404: no route, no such account or key
    │   └── Gone                    410: kept no longer (a statement past retention)
    ├── RequestTimeout              408: the client went silent mid-body
    ├── PayloadTooLarge             413: body over the configured limit
    ├── HeadersTooLarge             431: a header field too long, or too many of them
    ├── UpstreamUnavailable         502: the upstream refused or reset the connection
    ├── UpstreamTimeout             504: the upstream did not answer in time
    ├── StoreUnavailable            503: the store could not decide within its budget
    ├── GatewayBusy                 503: every upstream connection is relaying a response
    ├── Overloaded                  503: the worker already handles max_in_flight requests
    ├── PolicyInvalid               422: a policy reload refused (the old policy stays)
    └── PolicyRefusal               a decision of the policy, body from the policy's templates
        ├── QuotaExceeded           a meter would go over its limit (429 by default)
        ├── RateLimited             a rate meter's bucket is empty: 429 RATE_LIMITED, the
        │                           gateway's own body (not a template)
        ├── FeatureUnavailable      the tier lacks a feature the route needs (402/403)
        ├── TierForbidden           the route refuses the caller's tier (403)
        ├── ServiceCapDenied        the key's service cap denies the route's module (403)
        └── ServiceCapExceeded      the key's service cap on the module is used up (429)

Foreign exceptions (aiohttp client errors, pyjwt, redis) are translated where they enter
the gateway, with ``raise ... from exc``; nothing else reaches the boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    """An error with an HTTP status and a JSON body for the caller."""

    status = 500
    code = "INTERNAL_ERROR"
    #: the `outcome` label for metrics
    outcome = "error"
    #: close the connection after answering: the request's body was left half-read
    close_connection = False

    def __init__(
        self,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details) if details else None
        self.headers: dict[str, str] = dict(headers) if headers else {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ``code``, ``message`` and, when known, ``details``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(GatewayError):
    status = 400
    code = "BAD_REQUEST"
    outcome = "bad_request"


class ValidationError(BadRequest):
    code = "VALIDATION_ERROR"


class Unauthenticated(GatewayError):
    status = 401
    code = "UNAUTHORIZED"
    outcome = "unauthenticated"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="gateway"')


class Forbidden(GatewayError):
    status = 403
    code = "FORBIDDEN"
    outcome = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "NOT_FOUND"
    outcome = "not_found"


class MethodNotAllowed(GatewayError):
    """A method the gateway does not answer on a path it answers itself; ``Allow`` lists
    the ones it does (RFC 9110)."""

    status = 405
    code = "METHOD_NOT_ALLOWED"
    outcome = "bad_request"

    def __init__(self, method: str, path: str, allowed: frozenset[str]) -> None:
        listed = ", ".join(sorted(allowed))
        super().__init__(
            f"{method} is not allowed on {path}; allowed: {listed}", headers={"Allow": listed}
        )


class Gone(NotFound):
    status = 410
    code = "GONE"


class RequestTimeout(GatewayError):
    status = 408
    code = "REQUEST_TIMEOUT"
    outcome = "bad_request"
    close_connection = True


class Conflict(GatewayError):
    status = 409
    code = "CONFLICT"
    outcome = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    outcome = "payload_too_large"


class HeadersTooLarge(GatewayError):
    status = 431
    code = "REQUEST_HEADERS_TOO_LARGE"
    outcome = "bad_request"


class UpstreamUnavailable(GatewayError):
    status = 502
    code = "UPSTREAM_UNAVAILABLE"
    outcome = "upstream_error"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "UPSTREAM_TIMEOUT"
    outcome = "upstream_timeout"


class StoreUnavailable(GatewayError):
    status = 503
    code = "STORE_UNAVAILABLE"
    outcome = "store_unavailable"


class UpstreamCircuitOpen(GatewayError):
    """No target of the upstream may be tried now: its breaker is open or every target is
    ejected. Nothing was sent, so nothing is charged."""

    status = 503
    code = "UPSTREAM_CIRCUIT_OPEN"
    outcome = "upstream_error"


class GatewayBusy(GatewayError):
    """No pooled upstream connection came free in time: all are relaying responses (to
    clients that read slowly), so the wait is the gateway's, not the upstream's."""

    status = 503
    code = "GATEWAY_BUSY"
    outcome = "gateway_busy"


class Overloaded(GatewayError):
    """Shed before any work: this worker already handles as many requests as it may, and a
    longer queue would only make every caller wait (and every budget look exceeded)."""

    status = 503
    code = "OVERLOADED"
    outcome = "overloaded"


class PolicyRefusal(GatewayError):
    """A refusal whose status and body come from the policy's response templates."""

    outcome = "refused"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: dict[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        self._body = body

    def body(self) -> dict[str, Any]:
        return self._body


class QuotaExceeded(PolicyRefusal):
    outcome = "quota_exceeded"


class RateLimited(PolicyRefusal):
    """A request over a rate meter's rate (``kind: rate``). A policy refusal (shadow mode
    covers it), but its body is the gateway's own ``code``/``message``/``details``: the
    seed documents define no short-window limits, so there is no seed body to match."""

    code = "RATE_LIMITED"
    outcome = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        details: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=429, body={}, headers=headers)
        self.details = dict(details)

    def body(self) -> dict[str, Any]:
        return GatewayError.body(self)


class FeatureUnavailable(PolicyRefusal):
    outcome = "feature_unavailable"


class TierForbidden(PolicyRefusal):
    outcome = "tier_forbidden"


class ServiceCapDenied(PolicyRefusal):
    outcome = "service_cap_denied"


class ServiceCapExceeded(PolicyRefusal):
    outcome = "service_cap_exceeded"


class PolicyInvalid(GatewayError):
    """A policy reload was refused; the message names file, line and key path."""

    status = 422
    code = "POLICY_INVALID"
    outcome = "bad_request"
