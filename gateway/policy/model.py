"""The policy as frozen objects: meters, tiers, routes, key types and response templates."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.policy.billing import Billing

MeterKind = Literal["counter", "gauge", "rate"]
Period = Literal["day", "month"]
#: key and client scope only rate meters: a quota belongs to an account or a project
Scope = Literal["account", "project", "key", "client"]
Refund = Literal["unanswered", "never"]
#: what a tier's requests get while the store is unreachable (see gateway/metering/guard.py)
FailureMode = Literal["closed", "open"]
#: how a path spelled differently from a route's literal segments is treated (see Route)
PathMatching = Literal["strict", "lenient"]

#: the decision kinds a response template can be chosen for
DECISIONS = ("quota_exceeded", "feature_unavailable", "tier_forbidden")


@dataclass(frozen=True, slots=True)
class Rate:
    """A short-window rate limit held by GCRA (gateway/metering/rates.py): ``count``
    requests per ``seconds`` on average, at most ``burst`` at once from a full bucket."""

    count: int
    seconds: int  # 1, 60 or 3600: the period the rate was written with
    burst: int

    @property
    def emission_us(self) -> int:
        """The emission interval (one unit back every so many microseconds), whole
        microseconds so memory and Redis do the same exact integer arithmetic."""
        return max(round(self.seconds * 1_000_000 / self.count), 1)

    @property
    def per(self) -> str:
        return RATE_PERIODS[self.seconds]

    def text(self) -> str:
        """``10/s burst 20``, as `policy show` and `policy diff` print it."""
        return f"{self.count:,}/{self.per} burst {self.burst:,}"


#: a rate's period in seconds -> how it is written
RATE_PERIODS = {1: "s", 60: "min", 3600: "h"}


@dataclass(frozen=True, slots=True)
class Meter:
    """A quantity the gateway counts: calls over a calendar window, a live count, or a
    short-window rate (``kind: rate``)."""

    name: str
    kind: MeterKind
    period: Period | None  # counters only
    scope: Scope
    title: str  # the row title in a tier table: "Logic Engine Calls/Month"
    label: str  # for sentences: "Logic Engine calls per month"
    unit: str  # "calls", "bytes", ...
    display_unit: str | None = None  # bytes only: "MB", "GB"
    # counted from the upstream's X-Gateway-Usage reports, so no route needs to consume it
    reported: bool = False
    # rate meters only: the rate a tier gets when its limits do not name this meter
    rate: Rate | None = None


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    title: str
    shown_enabled: str = "✅ Enabled"  # table cells of `gateway policy show`
    shown_disabled: str = "❌ Disabled"
    # "upstream": the gateway cannot enforce it; it tells the upstream (X-Gateway-Features)
    enforced: Literal["gateway", "upstream"] = "gateway"


@dataclass(frozen=True, slots=True)
class Template:
    """A response for a decision: status and a JSON body with ``${variable}`` strings."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    title: str
    rank: int  # position in the file: lower is cheaper
    limits: Mapping[str, int | None]  # meter -> limit, None = unlimited (quota meters)
    features: frozenset[str]
    attributes: Mapping[str, str]  # display-only rows: price, support, SLA, ...
    responses: Mapping[str, Template]
    store_failure_mode: FailureMode | None = None  # None: the gateway's store_failure_mode
    # shadow: meter and decide, but forward what would be refused (counted and logged)
    shadow: bool = False
    #: counter -> units a gateway process leases at a time (hot accounts; metering/leases.py)
    leases: Mapping[str, int] = field(default_factory=dict)
    # rate meter -> its rate for this tier, None = unlimited (never in ``limits``)
    rates: Mapping[str, Rate | None] = field(default_factory=dict)

    def limit(self, meter: str) -> int | None:
        return self.limits.get(meter)

    def lease(self, meter: str) -> int:
        """Units of ``meter`` a process leases at a time (0: decided per request)."""
        return self.leases.get(meter, 0)


@dataclass(frozen=True, slots=True)
class Route:
    """A method + path pattern and what a request on it costs and needs."""

    name: str
    methods: frozenset[str] | None  # None: any method
    pattern: str
    regex: re.Pattern[str]
    auth: bool
    consume: tuple[tuple[str, int], ...]
    release: tuple[tuple[str, int], ...]
    features: tuple[str, ...]
    deny_tiers: frozenset[str]
    project_param: str | None
    refund: Refund
    # the gateway's own handler that answers instead of the upstream (provisioning, tiers, ...)
    answer: str | None = None
    # a byte gauge a write's declared Content-Length is charged to, so a write that would pass
    # the storage limit is refused before it is forwarded (the upstream's report settles it)
    body_meter: str | None = None
    shadow: bool = False
    # an `Upgrade: websocket` GET is tunnelled (gateway/proxy/websocket.py) after the same
    # identify, gate and meter phases; elsewhere Upgrade is a hop-by-hop header and dropped
    websocket: bool = False
    # Upstreams (Express, Spring, Rails, ...) often route case-insensitively and ignore a
    # trailing slash, so ``/api/Payments/x/`` is served as ``/api/payments/x``. ``loose``
    # matches those spellings too (literal segments in any case, with a trailing dot or
    # blank, an optional trailing slash) so such a variant can never fall through to a
    # catch-all route: strict refuses it, lenient forwards it spelled as the pattern is.
    # None when the pattern has nothing to spell differently (``/**``).
    loose: re.Pattern[str] | None = None
    literals: tuple[str, ...] = ()  # the pattern's literal segments, as loose's L<i> groups
    slash: bool = False  # the pattern ends with '/'
    path_matching: PathMatching = "strict"
    # a sensitive module (payments, scheduler, ...) a project key's service caps can limit
    module: str | None = None

    def variant(self, path: str) -> tuple[str, bool] | None:
        """``(canonical path, look-alike ending)`` when ``path`` is a spelling of this route
        other than the pattern's own; None when it is no spelling of it at all."""
        if self.loose is None:
            return None
        found = self.loose.fullmatch(path)
        if found is None:
            return None
        parts: list[str] = []
        done = 0
        ending = False
        for index, literal in enumerate(self.literals):
            start = found.start(f"L{index}")
            end = found.end(f"E{index}")
            ending = ending or end > found.end(f"L{index}")
            parts += (path[done:start], literal)
            done = end
        if "S" in self.loose.groupindex:
            parts += (path[done : found.start("S")], "/" if self.slash else "")
            done = found.end("S")
        parts.append(path[done:])
        return "".join(parts), ending


@dataclass(frozen=True, slots=True)
class Resolved:
    """The route a request is for, its path parameters and the path to forward (decoded)."""

    route: Route
    params: dict[str, str]
    path: str


class PathVariant(BadRequest):
    """A path that differs from a route only by case, a trailing slash or a look-alike ending.

    Refused rather than forwarded under another route: the upstream may well serve it as the
    route it resembles, and the request would then escape that route's rules."""

    code = "NON_CANONICAL_PATH"

    def __init__(self, path: str, canonical: str, route: str) -> None:
        super().__init__(
            f"the path {path!r} is a variant of {canonical!r} (route {route}); "
            "send the canonical path",
            details={"path": path, "canonical_path": canonical, "route": route},
        )


@dataclass(frozen=True, slots=True)
class ServiceCaps:
    """Per-key caps on sensitive modules, for tiers granting ``feature`` (seed 001)."""

    feature: str
    modules: Mapping[str, str]  # module name -> title


@dataclass(frozen=True, slots=True)
class KeyType:
    """A kind of API key told apart by its prefix (``anon_ask_``, ``ask_``)."""

    prefix: str
    kind: Literal["user", "project"]
    length: int  # random characters after the prefix
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    file: str
    digest: str
    meters: Mapping[str, Meter]
    features: Mapping[str, Feature]
    tiers: Mapping[str, Tier]
    default_tier: str
    routes: tuple[Route, ...]
    responses: Mapping[str, Template]
    key_types: tuple[KeyType, ...]
    tenant_claim: str
    table: tuple[str, ...]  # row order of `gateway policy show`: meters, features, attributes
    billing: Billing | None = None  # overage prices, packages, retention (policy/billing.py)
    shadow: bool = False  # the whole policy in shadow mode
    service_caps: ServiceCaps | None = None
    #: per tier, its upstream-enforced features as the header value: made once, at load
    _upstream_features: Mapping[str, str] = field(init=False, repr=False, compare=False)
    #: whether some rate meter is kept per client address: only then does a decision need
    #: the client's address (X-Forwarded-For parsed behind trusted proxies)
    meters_clients: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_upstream_features",
            {name: self._features_header(tier) for name, tier in self.tiers.items()},
        )
        object.__setattr__(
            self,
            "meters_clients",
            any(m.kind == "rate" and m.scope == "client" for m in self.meters.values()),
        )

    def shadowed(self, tier: Tier, route: Route) -> bool:
        """Whether a refusal of ``route`` for ``tier`` is only watched, not enforced."""
        return self.shadow or tier.shadow or route.shadow

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The first route whose method and pattern match, with its path parameters."""
        resolved = self.resolve(method, path)
        return None if resolved is None else (resolved.route, resolved.params)

    def resolve(self, method: str, path: str) -> Resolved | None:
        """The first route ``path`` is for, exactly or as a variant spelling of its pattern.

        Routes are tried in file order and the first one that matches either way decides, so
        a variant of a specific route never reaches a later catch-all. A variant is refused
        (``PathVariant``, a 400 naming the canonical path) unless the route is lenient; a
        look-alike ending (``/payments./x``, ``/payments%20``) is refused either way.
        """
        for route in self.routes:
            if route.methods is not None and method not in route.methods:
                continue
            # the loose pattern takes every spelling the exact one does: one regex per route
            # that cannot match, two for the one that does
            if route.loose is not None and route.loose.fullmatch(path) is None:
                continue
            found = route.regex.fullmatch(path)
            if found is not None:
                return Resolved(route, found.groupdict(), path)
            variant = route.variant(path)
            if variant is None:
                continue
            canonical, ending = variant
            if ending or route.path_matching == "strict":
                raise PathVariant(path, canonical, route.name)
            exact = route.regex.fullmatch(canonical)
            if exact is None:  # the loader builds both from one pattern; never expected
                raise PathVariant(path, canonical, route.name)
            return Resolved(route, exact.groupdict(), canonical)
        return None

    def answered_methods(self, path: str) -> frozenset[str]:
        """The methods of the routes the gateway answers itself (``answer:``) on ``path``.

        Another method on such a path is a 405, never forwarded (pipeline.py)."""
        claimed = _ANSWERED.get(self.digest)
        if claimed is None:
            claimed = _ANSWERED[self.digest] = _answered_paths(self.routes)
        if claimed.fullmatch(path) is None:
            return frozenset()
        # the first answered route to claim the path names it (/api/projects/anonymous, not
        # /api/projects/{id}); every answered route with that pattern adds its methods
        answered = [r for r in self.routes if r.answer is not None]
        pattern = next(r.pattern for r in answered if r.regex.fullmatch(path))
        return frozenset().union(*(r.methods or () for r in answered if r.pattern == pattern))

    def upstream_features(self, tier: Tier) -> str:
        """The tier's features the upstream enforces (``enforced: upstream``), as a header."""
        if self.tiers.get(tier.name) is tier:
            return self._upstream_features[tier.name]
        return self._features_header(tier)

    def _features_header(self, tier: Tier) -> str:
        return ",".join(sorted(f for f in tier.features if self.features[f].enforced == "upstream"))

    def tier(self, name: str | None) -> Tier:
        """The named tier; an unknown or missing name falls back to the default tier."""
        if name is not None:
            tier = self.tiers.get(name)
            if tier is not None:
                return tier
        return self.tiers[self.default_tier]

    def template(self, tier: Tier, decision: str, subject: str) -> Template:
        """The response for a decision, most specific first: the tier's, then the policy's."""
        specific = f"{decision}:{subject}"
        for table in (tier.responses, self.responses):
            for key in (specific, decision):
                found = table.get(key)
                if found is not None:
                    return found
        raise KeyError(decision)  # the loader guarantees a policy-wide default per decision

    def key_type(self, credential: str) -> KeyType | None:
        for key_type in self.key_types:
            if credential.startswith(key_type.prefix):
                return key_type
        return None

    def cheapest_tier(self, allows: Any) -> Tier | None:
        """The cheapest tier (file order) for which ``allows(tier)`` is true."""
        for tier in self.tiers.values():
            if allows(tier):
                return tier
        return None


#: per policy digest, one pattern matching every path an ``answer:`` route claims (a single
#: match on the forwarding path instead of one per answered route)
_ANSWERED: dict[str, re.Pattern[str]] = {}


def _answered_paths(routes: tuple[Route, ...]) -> re.Pattern[str]:
    parts = [re.sub(r"\(\?P<\w+>", "(?:", r.regex.pattern) for r in routes if r.answer is not None]
    return re.compile("|".join(f"(?:{p})" for p in parts) or r"(?!)")
