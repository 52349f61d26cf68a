"""One canonical path, used both to match routes and to forward, so no rule is bypassed."""

from __future__ import annotations

from urllib.parse import quote, unquote

from gateway.errors import BadRequest

# decoded characters that must never appear in a segment: they would change its meaning
_FORBIDDEN = ("/", "\\", "\x00")
# left unescaped when forwarding; not ';', which servlet containers read as the start of a
# path parameter (``/payments;x/y`` is their ``/payments/y``), so a decoded one goes up escaped
_SAFE = "!$&'()*+,=:@-._~"


def canonical_path(raw_path: str) -> tuple[str, str]:
    """``(decoded, encoded)`` canonical forms of a request's raw path (no query string).

    Percent-escapes are decoded once; ``.`` and ``..`` segments are resolved; empty
    segments (``//``) collapse. An encoded slash or backslash, a NUL, a control character,
    a fragment, a path parameter (``;``), invalid UTF-8 or a ``..`` above the root is a 400:
    there is no one right reading of it.
    """
    if not raw_path.startswith("/"):
        raise BadRequest("the request target must be an absolute path")
    if _already_canonical(raw_path):
        return raw_path, raw_path
    if "#" in raw_path:
        # a request target has no fragment; a server that cuts it off would see another path
        raise BadRequest("the request target must not contain a fragment ('#')")
    if ";" in raw_path:
        # a path parameter: routes match ``payments;x`` as its own segment while servlet
        # containers strip the parameter and serve ``payments``, so a rule could be bypassed
        raise BadRequest("path parameters (';') are not accepted")
    segments: list[str] = []
    for raw in raw_path.split("/"):
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError as exc:
            raise BadRequest("the path is not valid UTF-8") from exc
        if any(ch in segment for ch in _FORBIDDEN) or any(
            ord(ch) < 0x20 or ord(ch) == 0x7F for ch in segment
        ):
            raise BadRequest(
                "the path contains a backslash, an encoded slash or a control character"
            )
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise BadRequest("the path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    trailing = raw_path.endswith("/") and bool(segments)
    decoded = "/" + "/".join(segments) + ("/" if trailing else "")
    return decoded, encode_path(decoded)


def encode_path(decoded: str) -> str:
    """The encoded form of a canonical decoded path: each segment escaped for the wire."""
    return "/".join(quote(s, safe=_SAFE) for s in decoded.split("/"))


def _already_canonical(raw_path: str) -> bool:
    # the common case costs a few substring scans instead of a split and decode
    return (
        raw_path.isascii()
        and raw_path.isprintable()
        and "%" not in raw_path
        and "/." not in raw_path
        and "//" not in raw_path
        and "\\" not in raw_path
        and "#" not in raw_path
        and ";" not in raw_path
    )
