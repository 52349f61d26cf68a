"""Stripe: Checkout Sessions for upgrades, and the signed webhook that moves the tier."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from gateway.api.body import parse_json, read_bounded
from gateway.api.local import LocalContext, LocalHandler
from gateway.errors import (
    BadRequest,
    GatewayError,
    UpstreamUnavailable,
)
from gateway.identity.registry import Account, Registry, org_account_id
from gateway.identity.tokens import TENANT_ID
from gateway.metering.clock import Clock
from gateway.metering.store import Store
from gateway.settings import StripeSettings

log = logging.getLogger("gateway.stripe")

MAX_EVENT_BYTES = 256 * 1024
COMPLETED = "checkout.session.completed"
#: how long an applied event's id is remembered: Stripe retries a delivery for three days
EVENT_TTL = 30 * 86400


class PaymentsUnavailable(GatewayError):
    status = 503
    code = "PAYMENTS_NOT_CONFIGURED"
    outcome = "error"


class SignatureInvalid(BadRequest):
    code = "SIGNATURE_INVALID"


def sign(secret: str, timestamp: int, payload: bytes) -> str:
    """Stripe's v1 scheme: hex HMAC-SHA256 of ``{timestamp}.{payload}``."""
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def verify_signature(
    header: str | None, payload: bytes, secret: str, *, now: float, tolerance: float
) -> None:
    """Raise SignatureInvalid unless one ``v1`` entry signs this payload at a fresh ``t``."""
    if not header:
        raise SignatureInvalid("missing Stripe-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureInvalid("Stripe-Signature needs t=... and at least one v1=...")
    # both ways: an old signature is a replay, a future one a forged clock
    if abs(now - timestamp) > tolerance:
        raise SignatureInvalid("Stripe-Signature timestamp is outside the tolerance")
    expected = sign(secret, timestamp, payload).encode("ascii")
    # every candidate is compared in constant time; several v1 entries come with secret rolls
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    if not matched:
        raise SignatureInvalid("no Stripe-Signature v1 entry matches this payload")


class StripeClient:
    """Creates Checkout Sessions with Stripe's form-encoded API."""

    def __init__(self, settings: StripeSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=15)

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        # its own session: Stripe is not the upstream, and the proxy's session is tuned to
        # relay bytes untouched (no decompression, no default headers)
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            self._session = session
            yield
            self._session = None

    async def create_checkout(self, *, organization_id: str, account_id: str, tier: str) -> str:
        """The Checkout URL for moving ``organization_id`` to ``tier``."""
        secret = self._settings.secret_key()
        price = dict(self._settings.prices).get(tier)
        if secret is None or price is None or self._session is None:
            raise PaymentsUnavailable(f"upgrades to {tier} are not configured on this gateway")
        form = {
            "mode": self._settings.mode,
            "line_items[0][price]": price,
            "line_items[0][quantity]": "1",
            "success_url": self._settings.success_url,
            "cancel_url": self._settings.cancel_url,
            "client_reference_id": organization_id,
            # the webhook reads these back: they say whom the payment upgrades, and to what
            "metadata[organization_id]": organization_id,
            "metadata[account_id]": account_id,
            "metadata[target_tier]": tier,
        }
        url = f"{self._settings.api_base()}/v1/checkout/sessions"
        try:
            async with self._session.post(
                url, data=form, headers={"Authorization": f"Bearer {secret}"}
            ) as response:
                text = await response.text()
                if response.status != 200:
                    log.warning("Stripe refused a checkout: %s %s", response.status, text[:500])
                    raise UpstreamUnavailable("the payment provider refused the checkout")
                checkout = json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamUnavailable("the payment provider could not be reached") from exc
        checkout_url = checkout.get("url") if isinstance(checkout, dict) else None
        if not isinstance(checkout_url, str):
            raise UpstreamUnavailable("the payment provider answered without a checkout URL")
        return checkout_url


class StripeWebhook:
    """Applies ``checkout.session.completed`` once per event id; everything else is a no-op."""

    def __init__(
        self, *, settings: StripeSettings, registry: Registry, store: Store, clock: Clock
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._store = store
        self._clock = clock

    def handlers(self) -> dict[str, LocalHandler]:
        return {"stripe-webhook": self.receive}

    async def receive(self, ctx: LocalContext) -> web.Response:
        secret = self._settings.webhook_secret()
        if secret is None:
            raise PaymentsUnavailable("the Stripe webhook secret is not configured")
        payload = await _read(ctx.request)
        verify_signature(
            ctx.request.headers.get("Stripe-Signature"),
            payload,
            secret,
            now=self._clock.now(),
            tolerance=self._settings.tolerance_seconds,
        )
        event = parse_json(payload, "the event")
        event_id = event.get("id") if isinstance(event, dict) else None
        if not isinstance(event_id, str) or not 0 < len(event_id) <= 255:
            raise BadRequest("the event has no id")
        if event.get("type") != COMPLETED:
            return _received(event_id, applied=False, reason=f"ignored {event.get('type')!r}")
        claim = {"type": COMPLETED, "at": self._clock.now()}
        if not await self._store.put_record(
            "stripe_event", event_id, claim, only_if_absent=True, ttl_seconds=EVENT_TTL
        ):
            return _received(event_id, applied=False, reason="duplicate event")
        try:
            return await self._apply(ctx, event_id, event)
        except BaseException:
            # not applied: let Stripe's retry of this event try again
            await self._store.delete_record("stripe_event", event_id)
            raise

    async def _apply(self, ctx: LocalContext, event_id: str, event: dict[str, Any]) -> web.Response:
        obj = event.get("data", {}).get("object", {}) if isinstance(event.get("data"), dict) else {}
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        organization_id, tier = metadata.get("organization_id"), metadata.get("target_tier")
        policy = ctx.policy
        if not isinstance(organization_id, str) or not TENANT_ID.fullmatch(organization_id):
            return _received(event_id, applied=False, reason="no organization_id in metadata")
        if not isinstance(tier, str) or tier not in policy.tiers:
            return _received(event_id, applied=False, reason=f"unknown tier {tier!r}")
        if obj.get("payment_status") not in (None, "paid", "no_payment_required"):
            return _received(event_id, applied=False, reason="payment not completed")
        account_id = org_account_id(organization_id)
        rank = policy.tier(tier).rank

        def upgrade(account: Account) -> Account:
            # a payment only ever moves an organisation up; it never undoes a higher tier.
            # Compared with the tier as stored at the moment of the write (records.change),
            # so two payments at once end on the higher, whichever lands first
            if rank <= policy.tier(account.tier).rank:
                return account
            return dataclasses.replace(account, tier=tier)

        def new_organisation() -> Account:
            # a payment from an organisation never seen yet: it starts where every unknown
            # organisation is served from, then the payment applies
            return Account(
                id=account_id,
                tier=policy.default_tier,
                created_at=self._clock.now(),
                organization_id=organization_id,
            )

        account, changed = await self._registry.change_account(
            account_id, upgrade, create=new_organisation
        )
        if not changed or account.tier != tier:
            return _received(event_id, applied=False, reason=f"already on {account.tier}")
        return _received(event_id, applied=True, tier=tier)


def _received(event_id: str, *, applied: bool, **extra: Any) -> web.Response:
    # 2xx for anything verified, so Stripe stops retrying an event we chose to ignore
    return web.json_response({"received": True, "id": event_id, "applied": applied, **extra})


async def _read(request: web.Request) -> bytes:
    return await read_bounded(request, MAX_EVENT_BYTES, "an event")
