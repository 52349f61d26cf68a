"""The `gateway` command: serve, policy check/show/diff/replay, explain, demo-upstream."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import Gateway, handler_names
from gateway.demo import demo_app
from gateway.explain import explain, parse_request
from gateway.identity.resolve import Identity
from gateway.metering.clock import SystemClock
from gateway.metering.memory import MemoryStore
from gateway.policy.diff import markdown, policy_diff
from gateway.policy.lint import lint
from gateway.policy.loader import load_policy
from gateway.policy.source import ConfigError, load_source
from gateway.policy.table import tier_table
from gateway.replay import read_log, replay
from gateway.server import ServeError, serve
from gateway.settings import Settings, load_settings, parse_address
from gateway.shipped import locate
from gateway.trace import load_otel

EXIT_CONFIG = 2
EXIT_WARNINGS = 1  # `policy check --strict` found warnings only


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every --help shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.help is None:
            return action.help
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """--version, looked up only when asked for: reading the installed metadata costs every
    other command a scan of sys.path."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        try:
            version = importlib.metadata.version("quota-gateway")
        except importlib.metadata.PackageNotFoundError:  # a checkout never installed
            version = "unknown"
        print(f"{parser.prog} {version}")
        parser.exit()


Subparsers = Any  # argparse's _SubParsersAction, which it does not export


def _command(commands: Subparsers, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that shows its defaults in --help and reports a wrong flag with its own
    usage line (see main), not the top level's."""
    sub: argparse.ArgumentParser = commands.add_parser(
        name, formatter_class=_HelpFormatter, **kwargs
    )
    sub.set_defaults(command_parser=sub)
    return sub


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="A quota-enforcing API gateway.", formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = Settings()

    run = _command(commands, "serve", help="run the gateway")
    run.add_argument("--config", metavar="FILE", help="a gateway.yaml (flags override it)")
    run.add_argument(
        "--listen", metavar="HOST:PORT", help=f"proxy listener (default: {defaults.listen})"
    )
    run.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help=f"admin listener (default: {defaults.admin_listen})",
    )
    run.add_argument(
        "--upstream",
        metavar="URL",
        help=f"the upstream for every path (default: {defaults.upstreams[0][1]})",
    )
    run.add_argument(
        "--policy",
        metavar="FILE",
        help=f"policy YAML (default: {defaults.policy}, the shipped copy when not found here)",
    )
    run.add_argument(
        "--store", metavar="URL", help=f"'memory' or a Redis URL (default: {defaults.store})"
    )
    run.add_argument(
        "--store-timeout-ms",
        metavar="MS",
        type=int,
        help=f"budget of each store command (default: {defaults.store_timeout_ms})",
    )
    run.add_argument(
        "--store-failure-mode",
        choices=("closed", "open"),
        help="when the store is down: refuse with 503 (closed) or admit on a bounded local "
        f"allowance written back later (open) (default: {defaults.store_failure_mode})",
    )
    run.add_argument(
        "--require-store",
        action="store_true",
        default=None,
        help="exit with status 2 when the store does not answer at start, instead of starting "
        "degraded and probing it (config: require_store; default: off)",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        type=int,
        help=f"worker processes sharing the port (default: {defaults.workers})",
    )
    run.add_argument(
        "--max-in-flight",
        metavar="N",
        type=int,
        help="requests one worker handles at once; more are shed with 503 OVERLOADED "
        "(default: 1024)",
    )
    run.add_argument(
        "--tracing-endpoint",
        metavar="URL",
        help="export OpenTelemetry spans to this OTLP/HTTP collector, e.g. "
        "http://127.0.0.1:4318/v1/traces; needs the [otel] extra; config: tracing.endpoint "
        "(default: off)",
    )
    run.add_argument(
        "--demo",
        action="store_true",
        help="also run the bundled demo upstream and print a key to try it with",
    )
    run.add_argument(
        "--demo-listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8000",
        help="where --demo runs the demo upstream",
    )

    policy = _command(commands, "policy", help="check, show, diff or replay policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = _command(
        policy_commands,
        "check",
        help="validate and lint policy files: exit 2 on an error, 1 on a warning with --strict",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--strict", action="store_true", help="warnings fail too (exit 1): for CI")
    show = _command(policy_commands, "show", help="print the tier table as Markdown")
    show.add_argument("file", metavar="FILE")
    diff = _command(
        policy_commands,
        "diff",
        help="per tier, the limits, features, routes and error bodies that change",
    )
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    what_if = _command(
        policy_commands,
        "replay",
        help="replay access logs against a candidate policy: what would change",
    )
    what_if.add_argument("--policy", required=True, metavar="CANDIDATE", help="policy YAML")
    what_if.add_argument("logs", nargs="+", metavar="LOG", help="access log files (JSON lines)")
    what_if.add_argument("--examples", type=int, default=3, metavar="N", help="examples per row")
    what_if.add_argument("--json", action="store_true", help="print JSON instead of Markdown")

    why = _command(
        commands,
        "explain",
        help="why a request would be admitted or refused (consumes nothing)",
        description="Ask a running gateway's admin API (GATEWAY_ADMIN_TOKEN) about a credential, "
        "or, with --policy and --tier, decide offline for an account with no usage yet.",
    )
    why.add_argument("method", metavar="METHOD")
    why.add_argument("path", metavar="PATH")
    why.add_argument(
        "--admin", metavar="URL", default="http://127.0.0.1:9090", help="the admin listener"
    )
    why.add_argument(
        "--credential-env",
        metavar="NAME",
        default="GATEWAY_CREDENTIAL",
        help="the environment variable holding the caller's key or token (kept out of ps)",
    )
    why.add_argument("--policy", metavar="FILE", help="explain offline against this policy")
    why.add_argument(
        "--tier",
        metavar="TIER",
        help="offline: the caller's tier (default: the policy's default_tier)",
    )
    why.add_argument(
        "--body-bytes",
        metavar="N",
        type=int,
        help="the request's Content-Length, charged to a route's body_meter as serve does "
        "(default: no body)",
    )

    demo = _command(commands, "demo-upstream", help="run the bundled demo upstream alone")
    demo.add_argument(
        "--listen", metavar="HOST:PORT", default="127.0.0.1:8000", help="where it listens"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # the subcommand's own usage, not the top level's: that is the line the user needs
        getattr(args, "command_parser", parser).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "policy":
            return _policy(args)
        if args.command == "explain":
            return _explain(args)
        address = parse_address(args.listen)
        web.run_app(demo_app(), host=address.host, port=address.port, print=None)
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (ServeError, ValueError, OSError, aiohttp.ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _serve(args: argparse.Namespace) -> int:
    upstream = args.upstream
    extra = []
    if args.demo:
        demo_address = parse_address(args.demo_listen)
        upstream = upstream or f"http://{demo_address}"
        extra.append((demo_app(), demo_address))
    settings = load_settings(
        None if args.config is None else locate(args.config),
        listen=args.listen,
        admin_listen=args.admin_listen,
        upstream=upstream,
        policy=args.policy,
        store=args.store,
        store_timeout_ms=args.store_timeout_ms,
        store_failure_mode=args.store_failure_mode,
        require_store=args.require_store,
        workers=args.workers,
        max_in_flight=args.max_in_flight,
        tracing_endpoint=args.tracing_endpoint,
    )
    settings = dataclasses.replace(settings, policy=locate(settings.policy))
    load_policy(settings.policy)  # fail fast, with file:line, before binding anything
    if settings.tracing.enabled:
        load_otel()  # the [otel] extra, or an error naming it, before any worker starts
    serve(settings, on_ready=_print_demo_key if args.demo else None, extra_sites=extra)
    return 0


async def _print_demo_key(gateway: Gateway) -> None:
    """Give a newcomer something to curl: an account on the lowest tier and its key."""
    policy = gateway.policy.current
    tier = next(iter(policy.tiers.values()))
    key_type = next((k for k in policy.key_types if k.kind == "user"), None)
    if key_type is None:
        return
    account = await gateway.registry.create_account(tier.name, is_anonymous=tier.rank == 0)
    _, key = await gateway.registry.issue_key(account.id, key_type, label="demo")
    listen = gateway.settings.listen
    # a catch-all GET route that meters and needs no feature: something any tier may call
    route = next(
        (
            r
            for r in policy.routes
            if r.consume
            and r.pattern.endswith("/**")
            and not r.features
            and r.module is None  # a plain metered route, not a sensitive module
            and (r.methods is None or "GET" in r.methods)
        ),
        None,
    )
    path = route.pattern.replace("/**", "/demo") if route else "/"
    # printed once to the terminal for the newcomer; never written to the log
    print(
        f"\nDemo account {account.id} on tier {tier.name!r}. Try:\n"
        f"  curl -i -H 'Authorization: Bearer {key}' http://{listen}{path}\n",
        flush=True,
    )


def _explain(args: argparse.Namespace) -> int:
    method, path = parse_request(f"{args.method} {args.path}")
    if args.body_bytes is not None and args.body_bytes < 0:
        raise ValueError("--body-bytes is a number of bytes")
    if args.policy is not None:
        policy = load_policy(locate(args.policy))
        if args.tier is not None and args.tier not in policy.tiers:
            raise ValueError(f"no tier {args.tier!r}; tiers are: {', '.join(policy.tiers)}")
        identity = Identity(
            account_id="offline", tier=args.tier or policy.default_tier, kind="user"
        )
        clock = SystemClock()
        report = asyncio.run(
            explain(
                policy,
                MemoryStore(clock),
                clock,
                method,
                path,
                identity=identity,
                content_length=args.body_bytes,
                handlers=handler_names(args.policy),
            )
        )
    else:
        report = asyncio.run(_ask_admin(args, method, path))
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


async def _ask_admin(args: argparse.Namespace, method: str, path: str) -> Any:
    token = os.environ.get("GATEWAY_ADMIN_TOKEN")
    if not token:
        raise ValueError("set GATEWAY_ADMIN_TOKEN to ask a running gateway")
    body: dict[str, Any] = {"request": f"{method} {path}"}
    if args.body_bytes is not None:
        body["content_length"] = args.body_bytes
    credential = os.environ.get(args.credential_env)
    if credential:
        body["credential"] = credential
    url = args.admin.rstrip("/") + "/admin/explain"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        answer = await resp.json()
        if resp.status != 200:
            raise ValueError(f"{url} answered {resp.status}: {answer}")
        return answer


def _policy(args: argparse.Namespace) -> int:
    if args.policy_command == "show":
        sys.stdout.write(tier_table(load_policy(locate(args.file))))
        return 0
    if args.policy_command == "diff":
        old, new = load_policy(locate(args.old)), load_policy(locate(args.new))
        sys.stdout.write(markdown(policy_diff(old, new)))
        return 0
    if args.policy_command == "replay":
        candidate = load_policy(locate(args.policy))
        report = asyncio.run(replay(candidate, read_log(args.logs), examples=args.examples))
        if args.json:
            print(json.dumps(report.as_json(), indent=2))
        else:
            sys.stdout.write(report.markdown())
        return 0
    return _check(args.files, strict=args.strict)


def _check(files: Sequence[str], *, strict: bool) -> int:
    errors = warnings = 0
    for file in files:
        path = locate(file)
        try:
            policy = load_policy(path)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            errors += 1
            continue
        found = lint(policy, load_source(path), handler_names(path))
        for finding in found:
            print(finding.format(file), file=sys.stderr)
        file_errors = sum(1 for f in found if f.severity == "error")
        errors += file_errors
        warnings += len(found) - file_errors
        state = "ok" if not found else ("failed" if file_errors else "warnings")
        counts = f"; {file_errors} error(s), {len(found) - file_errors} warning(s)" if found else ""
        print(
            f"{state}: {file}: policy {policy.name!r}, {len(policy.tiers)} tiers, "
            f"{len(policy.meters)} meters, {len(policy.routes)} routes{counts}"
        )
    if errors:
        return EXIT_CONFIG
    return EXIT_WARNINGS if strict and warnings else 0


if __name__ == "__main__":
    sys.exit(main())
