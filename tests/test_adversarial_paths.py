"""Path variants (case, trailing slash, look-alike endings) never reach a route's upstream
under another route: strict routes refuse them, lenient routes forward the canonical path."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.errors import BadRequest
from gateway.policy.loader import ConfigError, load_policy, parse_policy
from gateway.policy.model import PathVariant, Policy
from gateway.proxy.path import canonical_path, encode_path
from tests.adversarial import RawUpstream, request_bytes, send_raw
from tests.conftest import GatewayFactory, Harness

STORES = ("memory", "redis")
POLICY = Path(__file__).parent.parent / "policies" / "agentstack.yaml"


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    upstream = await RawUpstream().start()
    yield upstream
    await upstream.close()


async def gateway_on(make_gateway: GatewayFactory, raw: RawUpstream, policy: str) -> Harness:
    return await make_gateway(policy, upstreams=(("/", URL(raw.url)),))


async def used(gw: Harness, account: str, meter: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"][meter]["used"])


@pytest.mark.parametrize(
    ("method", "target", "canonical"),
    [
        ("POST", "/api/Payments/charge", "/api/payments/charge"),
        ("POST", "/api/payments./charge", "/api/payments/charge"),
        ("POST", "/api/payments%20/charge", "/api/payments/charge"),
        ("POST", "/api/payments%E2%80%8B/charge", "/api/payments/charge"),
        ("POST", "/api/triggers/", "/api/triggers"),
        ("POST", "/api/Triggers", "/api/triggers"),
        ("GET", "/api/Logic/x", "/api/logic/x"),
        ("POST", "/api/DATA/x", "/api/data/x"),
        ("GET", "/API/anything", "/api/anything"),
    ],
)
async def test_a_variant_of_a_strict_route_is_a_400_naming_the_canonical_path(
    make_gateway: GatewayFactory, raw: RawUpstream, method: str, target: str, canonical: str
) -> None:
    gw = await gateway_on(make_gateway, raw, "agentstack")
    account = await gw.account("anonymous")
    key = await gw.key(account, "anon_ask_")
    wire = request_bytes(
        method,
        target,
        {"Authorization": f"Bearer {key}", "Content-Length": "2", "Connection": "close"},
        b"{}",
    )
    response = await send_raw(gw.client.port, wire)
    assert response.status == 400, response.body
    body = response.json()
    assert body["code"] == "NON_CANONICAL_PATH"
    assert body["details"]["canonical_path"] == canonical
    assert raw.received == []
    assert await used(gw, account, "api_calls") == 0


async def test_triggers_at_the_limit_stay_refused_under_every_spelling(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw = await gateway_on(make_gateway, raw, "agentstack")
    account = await gw.account("anonymous")
    key = await gw.key(account, "anon_ask_")
    await gw.set_usage(account, "triggers", 20)
    for target in ("/api/triggers", "/api/triggers/", "/api/Triggers", "/api/TRIGGERS/"):
        wire = request_bytes(
            "POST", target, {"Authorization": f"Bearer {key}", "Connection": "close"}
        )
        response = await send_raw(gw.client.port, wire)
        assert response.status in (400, 429), (target, response.body)
    assert raw.received == []
    assert await used(gw, account, "triggers") == 20


@pytest.fixture
def lenient_policy(tmp_path: Path) -> str:
    text = POLICY.read_text().replace(
        "name: agentstack\n", "name: agentstack\npath_matching: lenient\n", 1
    )
    path = tmp_path / "lenient.yaml"
    path.write_text(text)
    return str(path.with_suffix(""))


async def test_a_lenient_route_forwards_its_own_spelling_and_meters_it(
    make_gateway: GatewayFactory, raw: RawUpstream, lenient_policy: str
) -> None:
    gw = await gateway_on(make_gateway, raw, lenient_policy)
    account = await gw.account("anonymous")
    key = await gw.key(account, "anon_ask_")
    auth = {"Authorization": f"Bearer {key}", "Connection": "close"}
    for target in ("/api/Triggers/", "/API/LOGIC/Some-Id?q=1"):
        method = "POST" if "rigger" in target else "GET"
        response = await send_raw(gw.client.port, request_bytes(method, target, auth))
        assert response.status == 200, response.body
    assert [r.target for r in raw.received] == ["/api/triggers", "/api/logic/Some-Id?q=1"]
    assert await used(gw, account, "triggers") == 1
    assert await used(gw, account, "logic_engine_calls") == 1
    # a look-alike ending is refused even here: what it means upstream is anyone's guess
    response = await send_raw(gw.client.port, request_bytes("GET", "/api/logic./x", auth))
    assert response.status == 400
    assert len(raw.received) == 2


def test_path_matching_is_checked_where_it_is_written() -> None:
    text = POLICY.read_text().replace(
        "    path: /api/triggers\n", "    path: /api/triggers\n    path_matching: loose\n", 1
    )
    with pytest.raises(
        ConfigError,
        match=r"agentstack\.yaml:\d+ routes\[\d+\]\.path_matching: expected one of strict, lenient",
    ):
        parse_policy(text, "policies/agentstack.yaml")


# -- properties: whatever a path looks like, it is forwarded only under the route its own
# canonical form matches, or refused

SHIPPED = load_policy(POLICY)
LITERALS = sorted(
    {
        segment
        for route in SHIPPED.routes
        for segment in route.pattern.split("/")
        if segment and "{" not in segment and "*" not in segment
    }
)


def _respell(segment: str, data: st.DataObject) -> str:
    chars = [c.upper() if data.draw(st.booleans()) else c for c in segment]
    return "".join(chars) + data.draw(st.sampled_from(["", "", "", ".", " ", "\u00a0", ".."]))


FREE = st.text(alphabet="abcXYZ019-_.~", min_size=1, max_size=6)


@st.composite
def hostile_paths(draw: st.DrawFn) -> str:
    """A route's pattern made concrete, then respelled: literal segments in random case with
    random look-alike endings, free text in parameters, a random tail and trailing slash."""
    data = draw(st.data())
    route = draw(st.sampled_from(SHIPPED.routes))
    pieces: list[str] = []
    for segment in route.pattern.strip("/").split("/"):
        if segment == "**":
            pieces += draw(st.lists(st.one_of(FREE, st.sampled_from(LITERALS)), max_size=2))
        elif segment == "*" or segment.startswith("{"):
            pieces.append(draw(FREE))
        elif segment:
            pieces.append(_respell(segment, data))
    pieces += draw(st.lists(FREE, max_size=1))
    return "/" + "/".join(pieces) + draw(st.sampled_from(["", "/"]))


def _outcome(policy: Policy, method: str, path: str) -> tuple[str, str] | None:
    resolved = policy.resolve(method, path)
    return None if resolved is None else (resolved.route.name, resolved.path)


@settings(max_examples=400, deadline=None)
@given(path=hostile_paths(), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_no_path_is_forwarded_under_a_route_its_canonical_form_does_not_match(
    path: str, method: str
) -> None:
    for policy in (SHIPPED, LENIENT):
        try:
            decoded, _ = canonical_path(path.replace(" ", "%20").replace("\u00a0", "%C2%A0"))
            outcome = _outcome(policy, method, decoded)
        except PathVariant as refused:
            # the canonical form it names is itself served, by the route it names
            again = policy.resolve(method, refused.details["canonical_path"])  # type: ignore[index]
            assert again is not None and again.route.name == refused.details["route"]  # type: ignore[index]
            continue
        except BadRequest:
            continue
        if outcome is None:
            continue
        name, forwarded = outcome
        # what goes up is the route's own spelling, and it matches that route exactly
        route = next(r for r in policy.routes if r.name == name)
        assert route.regex.fullmatch(forwarded)
        assert _outcome(policy, method, forwarded) == (name, forwarded)
        # and no earlier route would have taken it under an upstream's loose routing
        for earlier in policy.routes:
            if earlier.name == name:
                break
            if earlier.methods is None or method in earlier.methods:
                assert earlier.variant(decoded) is None, (earlier.name, decoded)
                assert not earlier.regex.fullmatch(decoded)


LENIENT = parse_policy(
    POLICY.read_text().replace(
        "name: agentstack\n", "name: agentstack\npath_matching: lenient\n", 1
    ),
    "lenient.yaml",
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_case_and_slash_spelling_of_a_route_resolves_to_it_when_lenient(
    data: st.DataObject,
) -> None:
    route = data.draw(st.sampled_from([r for r in LENIENT.routes if r.literals]))
    concrete = re.sub(r"\{[a-z_]+\}|\*\*|\*", "v1", route.pattern)
    respelled = "/".join(
        "".join(c.upper() if data.draw(st.booleans()) else c for c in segment)
        for segment in concrete.split("/")
    )
    if data.draw(st.booleans()) and not respelled.endswith("/"):
        respelled += "/"
    method = next(iter(route.methods)) if route.methods else "GET"
    resolved = LENIENT.resolve(method, respelled)
    assert resolved is not None
    # an earlier route may own this spelling too; then it must own the canonical one as well
    exact = LENIENT.resolve(method, resolved.path)
    assert exact is not None and exact.route is resolved.route
    assert resolved.route.regex.fullmatch(resolved.path)
    if resolved.route is route:
        assert resolved.path.lower().rstrip("/") == concrete.lower().rstrip("/")


@settings(max_examples=300, deadline=None)
@given(
    segments=st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=5,
    ),
    slash=st.booleans(),
)
def test_a_rewritten_path_reads_back_as_itself(segments: list[str], slash: bool) -> None:
    # what a lenient route forwards is encode_path(canonical): the upstream must decode it
    # to the very path that was matched, whatever the segments hold
    segments = [s for s in segments if s not in (".", "..")] or ["x"]
    decoded = "/" + "/".join(segments) + ("/" if slash else "")
    encoded = encode_path(decoded)
    assert encoded.isascii()
    assert canonical_path(encoded) == (decoded, encoded)
