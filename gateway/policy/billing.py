"""The policy's billing section: overage prices, packages, tier prices, analytics retention.

Money is held in integer minor units (cents for USD) from the YAML on; no float ever
carries an amount. Overage for a meter in a month costs ``ceil(units * price / per)`` minor
units (rounded up to the next whole cent, never down), and at least ``minimum_charge`` once
any unit was paid as overage: 10,000 Logic Engine calls at $1.00 per 1,000 cost exactly
1000 cents; 1 API call at $0.50 per 1,000 costs the $0.01 minimum.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.policy.model import Meter
from gateway.policy.names import did_you_mean
from gateway.policy.source import Node, describe

_MONEY = re.compile(r"\$(\d{1,9})(?:\.(\d{1,2}))?")
_SIZE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}")
_KIND_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")


@dataclass(frozen=True, slots=True)
class OverageRule:
    meter: str
    switch: str  # the per-meter switch an account turns on (besides the global one)
    price: int  # minor units per ``per`` units
    per: int

    def describe(self) -> str:
        return f"{format_money(self.price)} per {self.per:,} units, rounded up to the cent"


@dataclass(frozen=True, slots=True)
class Package:
    kind: str  # "logic-engine": bought at POST /api/billing/logic-engine-package
    size: str  # "small"
    meter: str
    units: int
    price: int  # minor units, one-time

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.size}"

    @property
    def url(self) -> str:
        return f"/api/billing/{self.kind}-package?package_size={self.size}"


@dataclass(frozen=True, slots=True)
class Billing:
    switches: tuple[str, ...] = ()
    overage: Mapping[str, OverageRule] = field(default_factory=dict)  # by meter
    minimum_charge: int = 0
    never_overage: frozenset[str] = frozenset()  # tiers that never pay overage
    packages: Mapping[str, Mapping[str, Package]] = field(default_factory=dict)  # kind, size
    tier_prices: Mapping[str, int] = field(default_factory=dict)  # monthly, minor units
    retention_days: Mapping[str, int | None] = field(default_factory=dict)  # None: unlimited
    exports_meter: str | None = None

    def overage_cost(self, meter: str, units: int) -> int:
        """What ``units`` of overage on ``meter`` in one month cost, in minor units."""
        rule = self.overage.get(meter)
        if rule is None or units <= 0:
            return 0
        cost = -(-units * rule.price // rule.per)  # ceiling division on integers
        return max(cost, self.minimum_charge)

    def packages_for(self, meter: str) -> list[Package]:
        """Packages adding capacity to ``meter``, cheapest first."""
        found = [p for sizes in self.packages.values() for p in sizes.values() if p.meter == meter]
        return sorted(found, key=lambda p: (p.price, p.units))

    def overage_meters(self, tier: str, switches: Mapping[str, bool]) -> frozenset[str]:
        """The meters an account with these switches pays overage on (none when off)."""
        if tier in self.never_overage or not switches.get("enabled", False):
            return frozenset()
        return frozenset(m for m, r in self.overage.items() if switches.get(r.switch, False))


def format_money(minor: int) -> str:
    """``$10.00`` from 1000 (USD, two decimal places)."""
    return f"${minor // 100:,}.{minor % 100:02d}"


def parse_money(node: Node) -> int:
    value = node.value
    text = value if isinstance(value, str) else ""
    found = _MONEY.fullmatch(text.strip())
    if found is None:
        raise node.fail(
            f'expected an amount in dollars with at most two decimals such as "$0.50", '
            f"got {describe(value)}"
        )
    dollars, cents = found.groups()
    return int(dollars) * 100 + int((cents or "0").ljust(2, "0"))


def parse_billing(
    node: Node,
    meters: Mapping[str, Meter],
    tiers: tuple[str, ...],
    sizes: Callable[[Node, Meter], int | None],
) -> Billing:
    """Validate ``billing:``; ``sizes`` parses a package's units (limits' syntax)."""
    node.mapping(allowed={"overage", "packages", "tier_prices", "analytics"})
    switches: tuple[str, ...] = ()
    overage: dict[str, OverageRule] = {}
    minimum = 0
    never: set[str] = set()
    if (over := node.get("overage")) is not None:
        over.mapping(allowed={"switches", "minimum_charge", "never_for", "meters"})
        if (sw := over.get("switches")) is not None:
            switches = tuple(item.str(max_len=40) for item in sw.list())
        if (mc := over.get("minimum_charge")) is not None:
            minimum = parse_money(mc)
        if (nf := over.get("never_for")) is not None:
            for item in nf.list():
                never.add(_tier_name(item, tiers))
        if (ms := over.get("meters")) is not None:
            for meter_name, rule in ms.items():
                meter = meters.get(meter_name)
                if meter is None:
                    raise rule.fail(
                        f"unknown meter; meters are: {', '.join(meters)}"
                        + did_you_mean(meter_name, meters)
                    )
                if meter.kind != "counter":
                    raise rule.fail("overage is priced per unit of a counter, not a live count")
                rule.mapping(allowed={"switch", "price", "per"}, required={"switch", "price"})
                switch_node = rule.child("switch")
                switch = switch_node.str(max_len=40)
                if switch not in switches:
                    raise switch_node.fail(
                        f"unknown switch; switches are: {', '.join(switches)}"
                        + did_you_mean(switch, switches)
                    )
                per_node = rule.get("per", 1)
                assert per_node is not None
                per = per_node.int(minimum=1, maximum=10**9)
                overage[meter_name] = OverageRule(
                    meter_name, switch, parse_money(rule.child("price")), per
                )
    packages: dict[str, dict[str, Package]] = {}
    if (pk := node.get("packages")) is not None:
        for kind, kind_node in pk.items():
            if not _KIND_NAME.fullmatch(kind):
                raise kind_node.fail("a package kind is lowercase letters, digits and '-'")
            kind_node.mapping(allowed={"meter", "sizes"}, required={"meter", "sizes"})
            meter_node = kind_node.child("meter")
            meter_name = meter_node.str()
            meter = meters.get(meter_name)
            if meter is None:
                raise meter_node.fail(
                    f"unknown meter; meters are: {', '.join(meters)}"
                    + did_you_mean(meter_name, meters)
                )
            if meter.kind == "rate":
                raise meter_node.fail("a package adds to a quota; a rate comes with the tier")
            packages[kind] = {}
            for size, size_node in kind_node.child("sizes").items():
                if not _SIZE_NAME.fullmatch(size):
                    raise size_node.fail("a size is lowercase letters, digits, '_' and '-'")
                size_node.mapping(allowed={"units", "price"}, required={"units", "price"})
                units_node = size_node.child("units")
                units = sizes(units_node, meter)
                if not isinstance(units, int) or units <= 0:
                    raise units_node.fail("a package adds a positive number of units")
                packages[kind][size] = Package(
                    kind, size, meter_name, units, parse_money(size_node.child("price"))
                )
            if not packages[kind]:
                raise kind_node.child("sizes").fail("list at least one size")
    prices: dict[str, int] = {}
    if (tp := node.get("tier_prices")) is not None:
        for tier, price_node in tp.items():
            prices[_tier_name(price_node, tiers, tier)] = parse_money(price_node)
    retention: dict[str, int | None] = {}
    exports_meter = None
    if (an := node.get("analytics")) is not None:
        an.mapping(allowed={"retention_days", "exports_meter"}, required={"retention_days"})
        rd = an.child("retention_days")
        for tier, days_node in rd.items():
            _tier_name(days_node, tiers, tier)
            if days_node.value == "unlimited":
                retention[tier] = None
            else:
                retention[tier] = days_node.int(minimum=1, maximum=100_000)
        for tier in tiers:
            if tier not in retention:
                raise rd.fail(f"missing a retention for tier {tier!r} (days or unlimited)")
        if (em := an.get("exports_meter")) is not None:
            exports_meter = em.str()
            if exports_meter not in meters:
                raise em.fail(
                    f"unknown meter; meters are: {', '.join(meters)}"
                    + did_you_mean(exports_meter, meters)
                )
    return Billing(
        switches=switches,
        overage=overage,
        minimum_charge=minimum,
        never_overage=frozenset(never),
        packages={k: dict(v) for k, v in packages.items()},
        tier_prices=prices,
        retention_days=retention,
        exports_meter=exports_meter,
    )


def _tier_name(node: Node, tiers: tuple[str, ...], name: str | None = None) -> str:
    tier = name if name is not None else node.str()
    if tier not in tiers:
        raise node.fail(
            f"unknown tier {tier!r}; tiers are: {', '.join(tiers)}" + did_you_mean(tier, tiers)
        )
    return tier
