"""HTTP requests to request messages and response messages to JSON, with the proto3 JSON mapping
(`google.protobuf.json_format`).

A request message is assembled, as grpc-gateway does, from three places: the path's variables, the JSON body
(`body: "*"`: the whole message; `body: "<field>"`: that field), and, for every field neither covers, the query
string. Query parameters are named by the field's proto name or its lowerCamelCase JSON name; a nested field is
`parent.child`; a repeated field is the parameter repeated (`?sku=a&sku=b`); values are written as in JSON but
unquoted (`true`, `42`, `ENTITLEMENT_KIND_PERMANENT`, `3.5s`, `2026-01-01T00:00:00Z`). Map fields, and messages
other than the well-known types written as strings, cannot be query parameters. Anything unknown (a body field,
a query parameter) is INVALID_ARGUMENT naming it: a typo never passes silently as a default value.

Responses are `json_format.MessageToDict` with its defaults: lowerCamelCase names, fields at their default value
left out, int64 as strings, enums by name, timestamps in RFC 3339.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from server.http_api.errors import invalid
from server.http_api.routes import Route

#: Well-known message types whose proto3 JSON form is a string (or a plain scalar), so a query parameter can carry
#: one.
_STRING_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
        "google.protobuf.Int32Value",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.FloatValue",
        "google.protobuf.DoubleValue",
        "google.protobuf.BoolValue",
    }
)
_TRUE = frozenset({"true", "True", "TRUE", "t", "T", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "f", "F", "0"})
FieldPath = tuple[FieldDescriptor, ...]


def request_message(
    route: Route, path_values: Mapping[FieldPath, str], query: list[tuple[str, str]], body: bytes
) -> Message:
    """The RPC's request message for one HTTP request.

    Args:
        route: the matched route.
        path_values: the path variables' decoded values.
        query: the query parameters, decoded, in order.
        body: the raw body (empty: no body, as `{}`).

    Raises:
        HttpError: 400 INVALID_ARGUMENT naming the body field or query parameter that is wrong.
    """
    request_type = route.method.input_type
    fields: dict[str, Any] = {}
    if route.body:
        document = _json_body(body)
        if route.body == "*":
            if not isinstance(document, dict):
                raise invalid(f"request body: must be a JSON object ({request_type.full_name}), not {_kind(document)}")
            fields = document
        elif body:
            fields[route.body] = document
    elif body:
        raise invalid(f"request body: {route.http_method} {route.template} takes no body; use query parameters")
    for path, value in path_values.items():
        _set_path_value(fields, path, value)
    if query:
        if not route.query:
            raise invalid(f"query parameter {query[0][0][:64]!r}: {route.template} takes every field in its body")
        _merge_query(fields, request_type, route, path_values, query)
    message = GetMessageClass(request_type)()
    _check_names(fields, request_type, "")
    try:
        json_format.ParseDict(fields, message, ignore_unknown_fields=False)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        raise invalid(f"request: {_plain(_first_line(str(exc)))}") from None
    return message


def response_json(message: Message) -> bytes:
    """The proto3 JSON of a response message (defaults left out), UTF-8."""
    return json.dumps(json_format.MessageToDict(message), ensure_ascii=False, separators=(",", ":")).encode()


def _json_body(body: bytes) -> Any:
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("request body: is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise invalid(f"request body: field {exc.key[:64]!r} appears twice") from None
    except (ValueError, RecursionError) as exc:
        raise invalid(f"request body: is not JSON ({_first_line(str(exc))})") from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON allows a key twice and json.loads keeps the last; protojson refuses it, and so do we: two values for one
    # field of a grant are a bug in the caller, not a choice to make silently.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _check_names(document: Any, descriptor: Descriptor, where: str) -> None:
    """Refuses what json_format would take silently: a field given under both its names (`user_id` and `userId`:
    it keeps one), and an integer written with Python's digit separators ("1_000")."""
    if not isinstance(document, dict) or descriptor.full_name in _STRING_MESSAGES:
        return
    seen: set[str] = set()
    for key, value in document.items():
        field = descriptor.fields_by_name.get(key) or next((f for f in descriptor.fields if f.json_name == key), None)
        if field is None:
            continue  # json_format names it
        name = f"{where}{field.name}"
        if field.name in seen:
            raise invalid(f"request: {name} is given twice (as {field.name} and {field.json_name})")
        seen.add(field.name)
        values = value if isinstance(value, list) and field.is_repeated else [value]
        if field.type in _INTEGER_TYPES and any(isinstance(v, str) and "_" in v for v in values):
            raise invalid(f"request: {name}: {str(value)[:64]!r} is not an integer")
        nested = field.message_type
        if nested is not None and not nested.GetOptions().map_entry:
            for item in values:
                _check_names(item, nested, f"{name}.")


def _set_path_value(fields: dict[str, Any], path: FieldPath, value: str) -> None:
    """Sets a path variable's field in the JSON object; a body that gives another value for it is refused."""
    target = fields
    for field in path[:-1]:
        child = target.get(field.name, target.get(field.json_name))
        if child is None:
            child = target[field.name] = {}
        if not isinstance(child, dict):
            raise invalid(f"request: {field.name} must be an object")
        target = child
    field = path[-1]
    for key in {field.name, field.json_name}:
        if key in target and str(target[key]) != value:
            name = ".".join(f.name for f in path)
            raise invalid(f"request: {name} is {value!r} in the path but {target[key]!r} in the body")
        target.pop(key, None)
    target[field.name] = _scalar(field, value)


def _merge_query(
    fields: dict[str, Any],
    request_type: Descriptor,
    route: Route,
    path_values: Mapping[FieldPath, str],
    query: list[tuple[str, str]],
) -> None:
    taken = {tuple(f.full_name for f in path) for path in path_values}
    given: set[tuple[str, ...]] = set()
    for name, value in query:
        path = _query_field(request_type, name)
        key = tuple(f.full_name for f in path)
        if key in taken or (route.body and path[0].name == route.body):
            raise invalid(f"query parameter {name[:64]!r}: that field is set by the path or the body")
        field = path[-1]
        repeated = bool(field.is_repeated)
        if key in given and not repeated:
            raise invalid(f"query parameter {name[:64]!r}: given more than once")
        given.add(key)
        target = fields
        for parent in path[:-1]:
            target = target.setdefault(parent.name, {})
        converted = _scalar(field, value)
        if repeated:
            target.setdefault(field.name, []).append(converted)
        else:
            target[field.name] = converted


def _query_field(request_type: Descriptor, name: str) -> FieldPath:
    """The fields a query parameter's (dotted) name designates.

    Raises:
        HttpError: the name is unknown, or designates a map, or a message that has no string form.
    """
    message: Descriptor | None = request_type
    path: list[FieldDescriptor] = []
    for part in name.split("."):
        field = None
        if message is not None:
            field = message.fields_by_name.get(part) or next((f for f in message.fields if f.json_name == part), None)
        if field is None:
            raise invalid(f"query parameter {name[:64]!r}: {request_type.full_name} has no such field")
        if path and path[-1].is_repeated:
            raise invalid(f"query parameter {name[:64]!r}: {path[-1].name} is repeated; give it in a body")
        path.append(field)
        message = None
        nested = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if nested is not None and nested.GetOptions().map_entry:
            raise invalid(f"query parameter {name[:64]!r}: map fields cannot be query parameters")
        if nested is not None and nested.full_name not in _STRING_MESSAGES:
            message = nested
    if message is not None:
        raise invalid(f"query parameter {name[:64]!r}: a message; name one of its fields ({name[:64]}.<field>)")
    return tuple(path)


def _scalar(field: FieldDescriptor, value: str) -> Any:
    """A query or path value as the JSON value `json_format` expects: booleans as JSON booleans (as Go's
    strconv.ParseBool reads them), everything else as the string it is (json_format reads numbers, enums, bytes
    and the well-known types from strings)."""
    wrapper = field.message_type.full_name if field.message_type is not None else ""
    is_bool = field.type == FieldDescriptor.TYPE_BOOL or wrapper == "google.protobuf.BoolValue"
    if is_bool:
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise invalid(f"{field.name}: {value[:64]!r} is not a boolean (true or false)")
    return value


def _kind(document: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(document), "a number")


#: json_format quotes Python's own conversion errors; a caller reads them in plain words.
_PYTHON_WORDING = (
    (re.compile(r"invalid literal for int\(\) with base 10: (.*?)\.?$"), r"\1 is not an integer."),
    (re.compile(r"could not convert string to float: (.*?)\.?$"), r"\1 is not a number."),
)


def _plain(text: str) -> str:
    for pattern, wording in _PYTHON_WORDING:
        text = pattern.sub(wording, text)
    return text


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
