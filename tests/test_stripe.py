"""Upgrades through Stripe: Checkout against a local stand-in for Stripe's API, and signed
webhooks that move the tier once per event."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from gateway.api.stripe import SignatureInvalid, sign, verify_signature
from gateway.identity.registry import org_account_id
from gateway.settings import StripeSettings
from tests.conftest import GatewayFactory, Harness
from tests.redis_servers import free_port
from tests.test_agentidp_tiers import status, token

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

SECRET_KEY = "sk_test_gateway_0123456789"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
PRICES = (("pro", "price_pro_monthly"), ("enterprise", "price_enterprise_monthly"))


@dataclass
class FakeStripe:
    """Answers POST /v1/checkout/sessions like Stripe, after checking what Stripe checks."""

    forms: list[dict[str, str]] = field(default_factory=list)
    fail: bool = False
    answer: Any = None  # a JSON body to answer with instead of a Checkout Session

    async def create(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            return web.json_response({"error": {"type": "invalid_request_error"}}, status=401)
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": {"message": "form-encoded only"}}, status=400)
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        if self.fail:
            return web.json_response({"error": {"message": "card declined"}}, status=402)
        if self.answer is not None:
            return web.json_response(self.answer)
        number = len(self.forms)
        return web.json_response(
            {
                "id": f"cs_test_{number}",
                "object": "checkout.session",
                "url": f"https://checkout.stripe.com/c/pay/cs_test_{number}",
                "metadata": {
                    k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata")
                },
            }
        )


@pytest.fixture
async def stripe(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> FakeStripe:
    fake = FakeStripe()
    app = web.Application()
    app.router.add_post("/v1/checkout/sessions", fake.create)
    server = await aiohttp_server(app)
    monkeypatch.setenv("GATEWAY_STRIPE_API_BASE", str(server.make_url("")))
    monkeypatch.setenv("GATEWAY_STRIPE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("GATEWAY_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    return fake


async def agentidp(make_gateway: GatewayFactory) -> Harness:
    return await make_gateway("agentidp", stripe=StripeSettings(prices=PRICES))


def completed(event_id: str, organization_id: str, tier: str) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": "cs_test_1",
                "object": "checkout.session",
                "payment_status": "paid",
                "client_reference_id": organization_id,
                "metadata": {"organization_id": organization_id, "target_tier": tier},
            }
        },
    }
    return json.dumps(event).encode()


async def deliver(
    gw: Harness, payload: bytes, *, at: float | None = None, signature: str | None = None
) -> tuple[int, dict[str, Any]]:
    timestamp = int(gw.clock.now() if at is None else at)
    header = signature or f"t={timestamp},v1={sign(WEBHOOK_SECRET, timestamp, payload)}"
    resp = await gw.client.post(
        "/api/v1/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
    return resp.status, await resp.json()


async def test_upgrade_creates_a_checkout_session(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    resp = await gw.client.post(
        "/api/v1/tiers/upgrade", json={"target_tier": "pro"}, headers=token("org-1")
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"checkoutUrl": "https://checkout.stripe.com/c/pay/cs_test_1"}
    form = stripe.forms[0]
    assert form["mode"] == "subscription"
    assert form["line_items[0][price]"] == "price_pro_monthly"
    assert form["line_items[0][quantity]"] == "1"
    assert form["metadata[organization_id]"] == "org-1"
    assert form["metadata[target_tier]"] == "pro"
    assert form["client_reference_id"] == "org-1"
    assert form["success_url"] and form["cancel_url"]
    # nothing changes until Stripe says it was paid
    assert (await status(gw, token("org-1")))["tier"] == "free"


async def test_stripe_refusing_a_checkout_is_a_502(
    make_gateway: GatewayFactory, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await agentidp(make_gateway)
    stripe.fail = True
    resp = await gw.client.post(
        "/api/v1/tiers/upgrade", json={"target_tier": "pro"}, headers=token()
    )
    assert resp.status == 502
    body = await resp.json()
    assert body["code"] == "UPSTREAM_UNAVAILABLE"
    assert "declined" not in json.dumps(body)  # Stripe's words stay in the log
    # a wrong secret key is refused by Stripe, and so by us
    stripe.fail = False
    monkeypatch.setenv("GATEWAY_STRIPE_SECRET_KEY", "sk_test_wrong")
    resp = await gw.client.post(
        "/api/v1/tiers/upgrade", json={"target_tier": "pro"}, headers=token()
    )
    assert resp.status == 502
    assert len(stripe.forms) == 1  # only the first reached the form check


async def test_upgrade_without_stripe_configured_is_a_503(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_STRIPE_SECRET_KEY", raising=False)
    gw = await agentidp(make_gateway)
    resp = await gw.client.post(
        "/api/v1/tiers/upgrade", json={"target_tier": "pro"}, headers=token()
    )
    assert resp.status == 503
    assert (await resp.json())["code"] == "PAYMENTS_NOT_CONFIGURED"


async def test_signed_webhook_upgrades_the_organisation(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    headers = token("org-pay")
    assert (await gw.client.post("/api/v1/agents", headers=headers)).status == 200
    status_code, body = await deliver(gw, completed("evt_1", "org-pay", "pro"))
    assert status_code == 200
    assert body["applied"] is True
    after = await status(gw, headers)
    assert after["tier"] == "pro"
    assert after["limits"] == {"maxAgents": 100, "maxCallsPerDay": 50000, "maxTokensPerDay": 50000}
    assert after["usage"]["agentCount"] == 1  # usage carries over
    # the new tier is what the proxy enforces at once
    resp = await gw.client.get("/api/v1/things", headers=headers)
    assert gw.upstream.requests[-1].headers["X-Gateway-Tier"] == "pro"
    assert resp.headers["RateLimit-Limit"] == "50000"

    # a replay of the same event changes nothing, even after ops moved the org
    resp = await gw.admin.put(
        "/admin/accounts/org:org-pay/tier", json={"tier": "free"}, headers=gw.admin_headers
    )
    assert resp.status == 200
    status_code, body = await deliver(gw, completed("evt_1", "org-pay", "pro"))
    assert (status_code, body["applied"]) == (200, False)
    assert (await status(gw, headers))["tier"] == "free"
    # a new event id is a new payment
    status_code, body = await deliver(gw, completed("evt_2", "org-pay", "enterprise"))
    assert (status_code, body["applied"]) == (200, True)
    assert (await status(gw, headers))["tier"] == "enterprise"


async def test_several_v1_signatures_one_valid(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    payload = completed("evt_roll", "org-roll", "pro")
    t = int(gw.clock.now())
    good = sign(WEBHOOK_SECRET, t, payload)
    header = f"t={t},v1={sign('whsec_old_secret', t, payload)},v1={good},v0=ignored"
    status_code, body = await deliver(gw, payload, signature=header)
    assert (status_code, body["applied"]) == (200, True)


@pytest.mark.parametrize(
    "case",
    ["wrong secret", "tampered payload", "no signature", "stale", "future", "garbage header"],
)
async def test_bad_webhooks_are_refused(
    make_gateway: GatewayFactory, stripe: FakeStripe, case: str
) -> None:
    gw = await agentidp(make_gateway)
    payload = completed("evt_bad", "org-bad", "pro")
    now = int(gw.clock.now())
    header = {
        "wrong secret": f"t={now},v1={sign('whsec_wrong', now, payload)}",
        "tampered payload": f"t={now},v1={sign(WEBHOOK_SECRET, now, payload + b' ')}",
        "no signature": f"t={now}",
        "stale": f"t={now - 301},v1={sign(WEBHOOK_SECRET, now - 301, payload)}",
        "future": f"t={now + 301},v1={sign(WEBHOOK_SECRET, now + 301, payload)}",
        "garbage header": "nonsense",
    }[case]
    status_code, body = await deliver(gw, payload, signature=header)
    assert (status_code, body["code"]) == (400, "SIGNATURE_INVALID")
    assert (await status(gw, token("org-bad")))["tier"] == "free"
    # a refused event was not recorded: the genuine delivery still applies
    status_code, body = await deliver(gw, payload)
    assert (status_code, body["applied"]) == (200, True)


async def test_timestamps_inside_the_tolerance_are_accepted(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    now = gw.clock.now()
    status_code, _ = await deliver(gw, completed("evt_old", "org-a", "pro"), at=now - 300)
    assert status_code == 200
    status_code, _ = await deliver(gw, completed("evt_new", "org-b", "pro"), at=now + 300)
    assert status_code == 200


async def test_events_that_change_nothing(make_gateway: GatewayFactory, stripe: FakeStripe) -> None:
    gw = await agentidp(make_gateway)
    # an unknown tier, another event type, an unpaid session: verified, acknowledged, no-ops
    status_code, body = await deliver(gw, completed("evt_u", "org-n", "platinum"))
    assert (status_code, body["applied"]) == (200, False)
    other = json.dumps({"id": "evt_o", "type": "invoice.paid", "data": {"object": {}}}).encode()
    status_code, body = await deliver(gw, other)
    assert (status_code, body["applied"]) == (200, False)
    unpaid = json.loads(completed("evt_p", "org-n", "pro"))
    unpaid["data"]["object"]["payment_status"] = "unpaid"
    status_code, body = await deliver(gw, json.dumps(unpaid).encode())
    assert (status_code, body["applied"]) == (200, False)
    assert (await status(gw, token("org-n")))["tier"] == "free"
    # a signed body that is not JSON is a 400
    status_code, body = await deliver(gw, b"not json")
    assert status_code == 400


async def test_concurrent_deliveries_of_one_event_apply_once(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    payload = completed("evt_storm", "org-storm", "pro")
    results = await asyncio.gather(*(deliver(gw, payload) for _ in range(5)))
    assert sorted(body["applied"] for _, body in results) == [False] * 4 + [True]
    assert all(status_code == 200 for status_code, _ in results)
    assert (await status(gw, token("org-storm")))["tier"] == "pro"


# A fixed vector computed outside our code, so that a wrong scheme on both sides cannot agree:
#   printf '%s' "1795608000.$VECTOR_PAYLOAD" \
#     | openssl dgst -sha256 -hmac whsec_test_0123456789abcdef
VECTOR_TIMESTAMP = 1795608000  # 2026-11-25T12:00:00Z, the harness clock
VECTOR_PAYLOAD = (
    b'{"id":"evt_vector","object":"event","type":"checkout.session.completed",'
    b'"data":{"object":{"id":"cs_test_vector","object":"checkout.session",'
    b'"payment_status":"paid","client_reference_id":"org-vector",'
    b'"metadata":{"organization_id":"org-vector","target_tier":"pro"}}}}'
)
VECTOR_V1 = "0c3008c14315ae405e1c90fdb8ec1540393cd20b70d9f9dc3da97a43014cc929"


async def test_a_signature_computed_outside_the_gateway_is_accepted(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    assert int(gw.clock.now()) == VECTOR_TIMESTAMP
    assert sign(WEBHOOK_SECRET, VECTOR_TIMESTAMP, VECTOR_PAYLOAD) == VECTOR_V1
    header = f"t={VECTOR_TIMESTAMP},v1={VECTOR_V1}"
    # one changed hex digit of the same vector is refused
    forged = f"t={VECTOR_TIMESTAMP},v1={VECTOR_V1[:-1]}8"
    status_code, body = await deliver(gw, VECTOR_PAYLOAD, signature=forged)
    assert (status_code, body["code"]) == (400, "SIGNATURE_INVALID")
    status_code, body = await deliver(gw, VECTOR_PAYLOAD, signature=header)
    assert (status_code, body["applied"]) == (200, True)
    assert (await status(gw, token("org-vector")))["tier"] == "pro"


async def upgrade(gw: Harness, tier: str = "pro") -> tuple[int, dict[str, Any]]:
    resp = await gw.client.post(
        "/api/v1/tiers/upgrade", json={"target_tier": tier}, headers=token("org-1")
    )
    return resp.status, await resp.json()


async def test_the_checkout_names_the_account_the_webhook_will_upgrade(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    assert (await upgrade(gw))[0] == 200
    assert stripe.forms[0]["metadata[account_id]"] == org_account_id("org-1")


async def test_checkout_failures_say_which_part_failed(
    make_gateway: GatewayFactory, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each way an upgrade can fail answers its own message, and no Stripe words."""
    gw = await make_gateway("agentidp", stripe=StripeSettings(prices=PRICES[:1]))
    # a tier with no price on this gateway: refused before Stripe is asked
    assert await upgrade(gw, "enterprise") == (
        503,
        {
            "code": "PAYMENTS_NOT_CONFIGURED",
            "message": "upgrades to enterprise are not configured on this gateway",
        },
    )
    assert stripe.forms == []
    stripe.fail = True
    assert (await upgrade(gw))[1]["message"] == "the payment provider refused the checkout"
    stripe.fail = False
    for answer in ({"id": "cs_test_1"}, ["not", "a", "session"]):
        stripe.answer = answer
        assert await upgrade(gw) == (
            502,
            {
                "code": "UPSTREAM_UNAVAILABLE",
                "message": "the payment provider answered without a checkout URL",
            },
        )
    monkeypatch.setenv("GATEWAY_STRIPE_API_BASE", f"http://127.0.0.1:{free_port()}")
    assert (await upgrade(gw))[1]["message"] == "the payment provider could not be reached"


async def test_a_webhook_without_a_signature_says_so(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    resp = await gw.client.post("/api/v1/webhooks/stripe", data=completed("evt_1", "org-1", "pro"))
    assert resp.status == 400
    body = await resp.json()
    assert (body["code"], body["message"]) == (
        "SIGNATURE_INVALID",
        "missing Stripe-Signature header",
    )


def refusal_of(header: str, payload: bytes = b"{}", now: float = 1_800_000_000) -> str | None:
    try:
        verify_signature(header, payload, WEBHOOK_SECRET, now=now, tolerance=300)
    except SignatureInvalid as refused:
        return refused.message
    return None


def test_only_v1_entries_sign_and_other_schemes_are_ignored() -> None:
    """Stripe sends v0 entries (test mode) beside v1: they neither sign nor move ``t``."""
    at = 1_800_000_000
    good = sign(WEBHOOK_SECRET, at, b"{}")
    assert refusal_of(f"t={at},v1={good},v0=1234567890") is None
    # a rolled secret: the matching entry may come first; a non-ASCII entry is just no match
    assert refusal_of(f"t={at},v1={good},v1={'0' * 64},v1=caf\u00e9") is None
    assert refusal_of(f"t={at},v1={'0' * 64},v1=caf\u00e9") == (
        "no Stripe-Signature v1 entry matches this payload"
    )
    assert refusal_of(f"t={at},v0={good}") == (
        "Stripe-Signature needs t=... and at least one v1=..."
    )
    assert refusal_of(f"t={at}") == "Stripe-Signature needs t=... and at least one v1=..."
    assert refusal_of(f"v1={good}") == "Stripe-Signature needs t=... and at least one v1=..."
    assert refusal_of(f"t={at - 301},v1={sign(WEBHOOK_SECRET, at - 301, b'{}')}") == (
        "Stripe-Signature timestamp is outside the tolerance"
    )


async def test_a_webhook_without_its_secret_configured_is_a_503(
    make_gateway: GatewayFactory, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_STRIPE_WEBHOOK_SECRET")
    gw = await agentidp(make_gateway)
    status_code, body = await deliver(gw, completed("evt_1", "org-1", "pro"))
    assert (status_code, body) == (
        503,
        {
            "code": "PAYMENTS_NOT_CONFIGURED",
            "message": "the Stripe webhook secret is not configured",
        },
    )


async def test_a_signed_event_that_is_not_json_is_refused_naming_the_event(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    gw = await agentidp(make_gateway)
    status_code, body = await deliver(gw, b"\xff not json")
    assert status_code == 400
    assert body["message"] == "the event is not UTF-8 (byte 1)"


async def test_each_acknowledged_no_op_says_which_event_and_why(
    make_gateway: GatewayFactory, stripe: FakeStripe
) -> None:
    """Stripe's dashboard shows our answer to each delivery: it names the event and the
    reason nothing was applied."""
    gw = await agentidp(make_gateway)
    other = json.dumps({"id": "evt_o", "type": "invoice.paid"}).encode()
    assert await deliver(gw, other) == (
        200,
        {"received": True, "id": "evt_o", "applied": False, "reason": "ignored 'invoice.paid'"},
    )
    assert (await deliver(gw, completed("evt_1", "org-1", "pro")))[1]["applied"] is True
    assert await deliver(gw, completed("evt_1", "org-1", "pro")) == (
        200,
        {"received": True, "id": "evt_1", "applied": False, "reason": "duplicate event"},
    )
    # an event id is 1 to 255 characters
    longest = "e" * 255
    assert (await deliver(gw, completed(longest, "org-2", "pro")))[1]["id"] == longest
    for bad in ("", "e" * 256):
        assert await deliver(gw, completed(bad, "org-2", "pro")) == (
            400,
            {"code": "BAD_REQUEST", "message": "the event has no id"},
        )
