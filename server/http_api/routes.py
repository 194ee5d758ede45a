"""The HTTP routes of a gRPC service, built at start from its methods' `google.api.http` rules (never a table
written by hand, which could drift from the .proto).

A rule gives an HTTP method (`get`, `put`, `post`, `delete`, `patch`, or `custom` with its `kind`), a path
template, and `body`: `"*"` (the JSON body is the whole request message), a field name (the body is that field),
or empty (no body). Its `additional_bindings` are routes of the same RPC too. Path templates follow
`google/api/http.proto`:

    Template = "/" Segments [ ":" Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;

A variable binds a (possibly nested, `a.b`) singular scalar field of the request to what its segments match
(`{name}` is `{name=*}`: one segment; `**`, only last, any number), percent-decoded. The custom verb (`:grant`)
ends the last segment. What this module refuses at start, with the rule in the message: `response_body`, a body
on GET or DELETE, a variable naming a missing, repeated or message field, `**` before the last segment, and a
template it cannot parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor

from server.http_api.errors import HttpError

_PATTERNS = ("get", "put", "post", "delete", "patch")
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=@-]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RuleError(ValueError):
    """A `google.api.http` rule this API cannot serve; the service refuses to start."""


@dataclass(frozen=True)
class Route:
    """One HTTP binding of an RPC.

    Attributes:
        method: the RPC.
        http_method: `GET`, `POST`, ...
        template: the path template as the rule writes it.
        body: `"*"`, a top-level field name, or `""` (no body).
        variables: the path's variables as (regex group, field path).
        pattern: the regular expression the raw path must match.
    """

    method: MethodDescriptor
    http_method: str
    template: str
    body: str
    variables: tuple[tuple[str, tuple[FieldDescriptor, ...]], ...]
    pattern: re.Pattern[str]

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def query(self) -> bool:
        return self.body != "*"

    def match(self, raw_path: str) -> dict[tuple[FieldDescriptor, ...], str] | None:
        """The decoded values of the path's variables when `raw_path` (still percent-encoded) matches, else None."""
        found = self.pattern.fullmatch(raw_path)
        if found is None:
            return None
        return {path: unquote(found.group(group)) for group, path in self.variables}


def service_routes(service: ServiceDescriptor) -> tuple[Route, ...]:
    """The routes of every method of `service` that has a `google.api.http` rule.

    Raises:
        RuleError: a rule cannot be served (the message names the method and says why), or two rules bind the
            same HTTP method and template.
    """
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
        for binding in (rule, *rule.additional_bindings):
            route = route_for(method, binding)
            key = (route.http_method, route.pattern.pattern)
            if key in seen:
                raise RuleError(f"{method.full_name}: {route.http_method} {route.template} is bound by {seen[key]} too")
            seen[key] = method.full_name
            routes.append(route)
    return tuple(routes)


def route_for(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    """The route of one binding of `method`.

    Raises:
        RuleError: the binding cannot be served; the message names the method and says why.
    """
    where = method.full_name
    if rule.response_body:
        raise RuleError(f"{where}: response_body is not supported (the response is always the whole message)")
    if method.client_streaming:
        raise RuleError(f"{where}: client-streaming methods cannot be served over HTTP/JSON")
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RuleError(f"{where}: the http rule has no pattern (get, post, ...)")
    if kind == "custom":
        http_method, template = rule.custom.kind.upper(), rule.custom.path
        if not _IDENTIFIER.match(http_method):
            raise RuleError(f"{where}: custom HTTP method {rule.custom.kind!r} is not a token")
    else:
        http_method, template = kind.upper(), getattr(rule, kind)
    request = method.input_type
    body = rule.body
    if body and http_method in ("GET", "DELETE"):
        raise RuleError(f"{where}: {http_method} {template} cannot have a body")
    if body not in ("", "*"):
        field = request.fields_by_name.get(body)
        if field is None:
            raise RuleError(f"{where}: body {body!r} is not a field of {request.full_name}")
    pattern, variables = compile_template(template, request, where)
    if body not in ("", "*"):
        bound = {path[0].name for _, path in variables}
        if body in bound:
            raise RuleError(f"{where}: field {body!r} is both the body and a path variable")
    return Route(method, http_method, template, body, variables, pattern)


def compile_template(
    template: str, request: Descriptor, where: str = "template"
) -> tuple[re.Pattern[str], tuple[tuple[str, tuple[FieldDescriptor, ...]], ...]]:
    """The regular expression matching a path template (on the raw, percent-encoded path) and its variables.

    Raises:
        RuleError: the template does not follow the grammar, or a variable names a field that cannot be bound.
    """
    if not template.startswith("/"):
        raise RuleError(f"{where}: path template {template!r} must start with '/'")
    segments, verb = _split(template[1:], template, where)
    parts: list[str] = []
    variables: list[tuple[str, tuple[FieldDescriptor, ...]]] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment.startswith("{"):
            inner = segment[1:-1]
            field_path, _, sub = inner.partition("=")
            sub_segments = sub.split("/") if sub else ["*"]
            for position, sub_segment in enumerate(sub_segments):
                if sub_segment == "**" and not (last and position == len(sub_segments) - 1):
                    raise RuleError(f"{where}: '**' must be the last segment of {template!r}")
            group = f"v{len(variables)}"
            regex = "/".join(_segment_regex(s, template, where) for s in sub_segments)
            parts.append(f"(?P<{group}>{regex})")
            variables.append((group, _field_path(request, field_path, template, where)))
        else:
            if segment == "**" and not last:
                raise RuleError(f"{where}: '**' must be the last segment of {template!r}")
            parts.append(_segment_regex(segment, template, where))
    regex = "/" + "/".join(parts)
    if verb is not None:
        regex += ":" + re.escape(verb)
    paths = [path for _, path in variables]
    if len({tuple(f.full_name for f in p) for p in paths}) != len(paths):
        raise RuleError(f"{where}: a field is bound twice in {template!r}")
    return re.compile(regex), tuple(variables)


def _split(text: str, template: str, where: str) -> tuple[list[str], str | None]:
    """The template's segments (a variable, with its own slashes, is one) and its verb."""
    segments: list[str] = []
    current = ""
    depth = 0
    verb: str | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if char == "{":
            if depth or current:
                raise RuleError(f"{where}: a variable must be a whole segment in {template!r}")
            depth = 1
            current += char
        elif char == "}":
            if not depth:
                raise RuleError(f"{where}: unbalanced '}}' in {template!r}")
            depth = 0
            current += char
        elif char == "/" and not depth:
            segments.append(current)
            current = ""
        elif char == ":" and not depth:
            verb = text[index + 1 :]
            if not verb or not _LITERAL.match(verb):
                raise RuleError(f"{where}: the verb of {template!r} is not a literal")
            break
        else:
            if depth == 0 and current.endswith("}"):
                raise RuleError(f"{where}: a variable must be a whole segment in {template!r}")
            current += char
        index += 1
    if depth:
        raise RuleError(f"{where}: unbalanced '{{' in {template!r}")
    segments.append(current)
    if any(not segment for segment in segments):
        raise RuleError(f"{where}: empty segment in {template!r}")
    return segments, verb


def _segment_regex(segment: str, template: str, where: str) -> str:
    if segment == "*":
        return "[^/]+"
    if segment == "**":
        return ".+"
    if not _LITERAL.match(segment):
        raise RuleError(f"{where}: segment {segment!r} of {template!r} is not a literal, '*', '**' or a variable")
    return re.escape(segment)


def _field_path(request: Descriptor, dotted: str, template: str, where: str) -> tuple[FieldDescriptor, ...]:
    """The fields a variable's dotted path names: singular messages down to a singular scalar."""
    message: Descriptor | None = request
    path: list[FieldDescriptor] = []
    for name in dotted.split("."):
        if message is None or not _IDENTIFIER.match(name):
            raise RuleError(f"{where}: variable {dotted!r} of {template!r} does not name a field")
        field = message.fields_by_name.get(name)
        if field is None:
            raise RuleError(f"{where}: {message.full_name} has no field {name!r} (variable of {template!r})")
        if _is_repeated(field):
            raise RuleError(f"{where}: {field.full_name} is repeated; a path variable binds one value")
        path.append(field)
        message = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    if path[-1].type == FieldDescriptor.TYPE_MESSAGE:
        raise RuleError(f"{where}: {path[-1].full_name} is a message; a path variable binds a scalar field")
    return tuple(path)


def _is_repeated(field: FieldDescriptor) -> bool:
    # `is_repeated` is protobuf 5.26+'s spelling; `label` is deprecated there.
    return bool(field.is_repeated)


class Router:
    """Finds the route of a request: by path, then by method."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes

    def resolve(self, http_method: str, raw_path: str) -> tuple[Route, dict[tuple[FieldDescriptor, ...], str]]:
        """The route of `http_method` on `raw_path` (percent-encoded) and its path variables' values.

        Raises:
            HttpError: no route has that path (404, NOT_FOUND), or none of those that do takes that method (405,
                UNIMPLEMENTED, with `Allow`).
        """
        allowed: list[str] = []
        for route in self.routes:
            values = route.match(raw_path)
            if values is None:
                continue
            if route.http_method == http_method:
                return route, values
            allowed.append(route.http_method)
        if not allowed:
            raise HttpError(404, grpc.StatusCode.NOT_FOUND, f"no route for {raw_path[:256]!r}")
        methods = ", ".join(sorted(set(allowed)))
        raise HttpError(
            405,
            grpc.StatusCode.UNIMPLEMENTED,
            f"{raw_path[:256]!r} takes {methods}, not {http_method[:16]}",
            headers={"Allow": methods},
        )
