"""The policy's routes: path patterns (strict and look-alike forms), methods, costs, answers."""

from __future__ import annotations

import re
from typing import Any, cast

from gateway.policy.model import Feature, Meter, PathMatching, Route, ServiceCaps, Tier
from gateway.policy.names import did_you_mean
from gateway.policy.source import Node

_ROUTE_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()+,;=:@-]+")


def compile_pattern(node: Node) -> tuple[re.Pattern[str], set[str]]:
    """``/api/projects/{id}/members``, ``*`` for one segment, a final ``**`` for the rest."""
    pattern = node.str(max_len=500)
    if not pattern.startswith("/"):
        raise node.fail("a path pattern starts with '/'")
    if pattern == "/**":
        return re.compile(r"/.*"), set()
    segments = pattern[1:].split("/")
    parts: list[str] = []
    params: set[str] = set()
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            if not last:
                raise node.fail("'**' may only be the last segment")
            # "/a/**" matches "/a" and everything below it
            parts.append("(?:/.*)?")
            continue
        if segment == "*":
            parts.append("/[^/]+")
        elif (found := _PARAM.fullmatch(segment)) is not None:
            param = found.group(1)
            if param in params:
                raise node.fail(f"parameter {{{param}}} appears twice")
            params.add(param)
            parts.append(f"/(?P<{param}>[^/]+)")
        elif segment == "" and last:
            parts.append("/")
        elif _SEGMENT.fullmatch(segment):
            parts.append("/" + re.escape(segment))
        else:
            raise node.fail(f"invalid path segment {segment!r}")
    return re.compile("".join(parts)), params


# what upstreams commonly ignore at the end of a segment: dots (Windows/IIS, some static
# servers), blanks (``%20``, a no-break space) and invisible characters (zero-width, BOM)
_LOOK_ALIKE_ENDING = r"[.\s\u200b-\u200d\u2060\ufeff]*"


def loose_pattern(pattern: str) -> tuple[re.Pattern[str] | None, tuple[str, ...], bool]:
    """The regex that also matches spellings an upstream may treat as ``pattern``.

    Each literal segment matches in any case (``L<i>``) followed by a look-alike ending
    (``E<i>``); the end takes an optional trailing slash (``S``) unless the pattern ends in
    ``**``. Returns ``(regex or None, literal segments, pattern ends with '/')``; None when no
    spelling other than the pattern's own is possible.
    """
    if pattern in ("/", "/**"):
        return None, (), pattern == "/"
    segments = pattern[1:].split("/")
    slash = segments[-1] == ""
    if slash:
        segments.pop()
    parts: list[str] = []
    literals: list[str] = []
    for segment in segments:
        if segment == "**":
            parts.append("(?:/.*)?")
        elif segment == "*" or _PARAM.fullmatch(segment):
            parts.append("/[^/]+")
        else:
            index = len(literals)
            literals.append(segment)
            parts.append(
                f"/(?P<L{index}>(?i:{re.escape(segment)}))(?P<E{index}>{_LOOK_ALIKE_ENDING})"
            )
    if segments[-1] != "**":
        parts.append("(?P<S>/?)")
    return re.compile("".join(parts)), tuple(literals), slash


def _costs(
    node: Node | None, meters: dict[str, Meter], *, gauges_only: bool = False
) -> tuple[tuple[str, int], ...]:
    if node is None:
        return ()
    out: list[tuple[str, int]] = []
    for meter_name, cost_node in node.items():
        meter = meters.get(meter_name)
        if meter is None:
            raise cost_node.fail(
                f"unknown meter; meters are: {', '.join(meters)}" + did_you_mean(meter_name, meters)
            )
        if gauges_only and meter.kind != "gauge":
            raise cost_node.fail("only gauges (live counts) can be released")
        out.append((meter_name, cost_node.int(minimum=1, maximum=10**9)))
    return tuple(out)


def path_matching(node: Node | None, default: PathMatching) -> PathMatching:
    if node is None:
        return default
    return cast(PathMatching, node.str(choices=("strict", "lenient")))


def parse_routes(
    node: Node,
    meters: dict[str, Meter],
    features: dict[str, Feature],
    tiers: dict[str, Tier],
    service_caps: ServiceCaps | None,
    matching: PathMatching = "strict",
) -> tuple[Route, ...]:
    routes: list[Route] = []
    names: set[str] = set()
    for item in node.list():
        item.mapping(
            allowed={
                "name",
                "methods",
                "path",
                "auth",
                "consume",
                "release",
                "features",
                "deny_tiers",
                "project_param",
                "refund",
                "answer",
                "body_meter",
                "shadow",
                "module",
                "path_matching",
                "websocket",
            },
            required={"name", "path"},
        )
        name_node = item.child("name")
        name = name_node.str(max_len=63)
        if not _ROUTE_NAME.fullmatch(name):
            raise name_node.fail("route names are lowercase letters, digits, '_', '.' and '-'")
        if name in names:
            raise name_node.fail(f"route name {name!r} is used twice")
        names.add(name)
        methods = None
        methods_node = item.get("methods")
        if methods_node is not None:
            methods = frozenset(m.str(choices=_METHODS) for m in methods_node.list())
            if not methods:
                raise methods_node.fail("list at least one method, or leave methods out for any")
        regex, params = compile_pattern(item.child("path"))
        loose, literals, slash = loose_pattern(item.child("path").value)
        auth_node = item.get("auth", True)
        assert auth_node is not None
        auth = auth_node.bool()
        consume = _costs(item.get("consume"), meters)
        release = _costs(item.get("release"), meters, gauges_only=True)
        required: list[str] = []
        features_node = item.get("features", [])
        assert features_node is not None
        for feature_node in features_node.list():
            feature = feature_node.str()
            if feature not in features:
                raise feature_node.fail(
                    f"unknown feature; features are: {', '.join(features) or '(none)'}"
                    + did_you_mean(feature, features)
                )
            required.append(feature)
        deny: set[str] = set()
        deny_node = item.get("deny_tiers", [])
        assert deny_node is not None
        for tier_node in deny_node.list():
            tier = tier_node.str()
            if tier not in tiers:
                raise tier_node.fail(
                    f"unknown tier; tiers are: {', '.join(tiers)}" + did_you_mean(tier, tiers)
                )
            deny.add(tier)
        if not auth and (consume or release or required or deny):
            raise item.child("auth").fail("a route without auth cannot meter, gate or deny tiers")
        project_param = None
        param_node = item.get("project_param")
        if param_node is not None:
            project_param = param_node.str()
            if project_param not in params:
                raise param_node.fail(f"the path has no parameter {{{project_param}}}")
        refund_node = item.get("refund", "unanswered")
        assert refund_node is not None
        refund = refund_node.str(choices=("unanswered", "never"))
        answer = None
        if (answer_node := item.get("answer")) is not None:
            answer = answer_node.str(max_len=63)
            if not _ROUTE_NAME.fullmatch(answer):
                raise answer_node.fail("a handler name is lowercase letters, digits, '_' and '-'")
        body_meter = None
        if (body_node := item.get("body_meter")) is not None:
            body_meter = body_node.str()
            found = meters.get(body_meter)
            if found is None or found.kind != "gauge" or found.unit != "bytes":
                raise body_node.fail("body_meter names a gauge whose unit is bytes")
            if not auth:
                raise body_node.fail("a route without auth cannot meter")
        module = None
        if (module_node := item.get("module")) is not None:
            module = module_node.str()
            modules = service_caps.modules if service_caps is not None else {}
            if module not in modules:
                raise module_node.fail(
                    f"unknown module; service_caps.modules are: {', '.join(modules) or '(none)'}"
                    + did_you_mean(module, modules)
                )
            if not auth:
                raise module_node.fail("a route without auth has no key to cap")
        websocket = False
        if (ws_node := item.get("websocket")) is not None:
            websocket = ws_node.bool()
            if websocket and (answer is not None or body_meter is not None):
                raise ws_node.fail("a WebSocket route is forwarded: no answer, no body_meter")
            if websocket and methods is not None and "GET" not in methods:
                raise ws_node.fail("a WebSocket handshake is a GET: list GET in methods")
        routes.append(
            Route(
                name=name,
                methods=methods,
                pattern=item.child("path").value,
                regex=regex,
                auth=auth,
                consume=consume,
                release=release,
                features=tuple(required),
                deny_tiers=frozenset(deny),
                project_param=project_param,
                refund=cast(Any, refund),
                answer=answer,
                body_meter=body_meter,
                shadow=(flag.bool() if (flag := item.get("shadow")) is not None else False),
                module=module,
                loose=loose,
                literals=literals,
                slash=slash,
                path_matching=path_matching(item.get("path_matching"), matching),
                websocket=websocket,
            )
        )
    return tuple(routes)
