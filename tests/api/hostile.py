"""Hostile request bodies and paths for every write route, and a way to tell that nothing changed.

The routes come from the app's own OpenAPI document, so a route added later is
attacked without editing this file: it starts from the example in ``EXAMPLES``
when there is one, else from a body built out of its schema's required fields.

A hostile value is one the contract forbids wherever it is put: text holding
NUL, another control character or a lone surrogate (contract §1: refs, metrics and
every text field), bytes that are not UTF-8, integers outside 63 bits or sums
that leave them, booleans or null where the schema takes neither, nesting ten
thousand deep, and bodies over the body cap. Null and booleans are put only
where the route's own schema refuses them, so a field whose null means "remove"
or "default" is never counted as hostile.

Bodies are encoded here, not by httpx: ``json=`` cannot send a lone surrogate
(it is no valid UTF-8) nor a ``NaN`` token, and a body nested ten thousand deep
would exhaust Python's recursion in ``json.dumps``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import sqlalchemy as sa
from hypothesis import strategies as st

WRITE_METHODS = ("post", "put", "patch", "delete")
MAX_63 = 2**63 - 1
DEPTH = 10_000
# Above the default max_body_bytes (256 KiB), so the answer must be 413.
OVERSIZE = 300_000

# Text the contract refuses in any field: C0 controls (tab, newline and carriage
# return aside, which free text may reasonably hold), DEL, C1 controls, and the
# lone surrogates that no UTF-8 text can carry.
CONTROLS = [chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + ["\x7f"]
C1 = [chr(c) for c in range(0x80, 0xA0)]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
BAD_CHARS = ["\x00", *CONTROLS, *C1, *SURROGATES]

# Integers no counter, limit or amount may hold, and JSON number tokens that are no integer.
HUGE = [2**63, 2**63 + 1, 2**64, 10**40, -(2**63) - 1]
NON_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400"]

# Percent-encoded path values: NUL, controls, a surrogate as UTF-8 would spell it
# (ED A0 80, which is no valid UTF-8), bytes that decode to nothing, a long ref.
HOSTILE_PATHS = [
    "%00",
    "user:al%00ice",
    "user:a%01b",
    "user:a%1Bb",
    "user:a%7Fb",
    "user:a%C2%80b",
    "user:a%ED%A0%80b",
    "user:a%FFb",
    "%C0%80",
    "user:" + "a" * 5_000,
]


@dataclass(frozen=True)
class Raw:
    """Bytes spliced into the body as they are: tokens json.dumps would not write."""

    text: bytes


def encode(value: Any) -> bytes:
    """JSON bytes for ``value``; ``Raw`` parts verbatim, strings ASCII-escaped.

    ``ensure_ascii`` writes a lone surrogate as its ``\\udXXX`` escape, which is
    exactly what a hostile client sends: valid JSON text naming invalid Unicode.
    """
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (encode(str(k)) + b":" + encode(v) for k, v in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=True).encode("ascii")


def nested(depth: int = DEPTH) -> Raw:
    return Raw(b"[" * depth + b"]" * depth)


def nested_objects(depth: int = DEPTH) -> Raw:
    return Raw(b'{"a":' * depth + b"{}" + b"}" * depth)


# -- the routes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.path}"

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def body_schema(self) -> dict[str, Any] | None:
        body = self.operation.get("requestBody", {}).get("content", {}).get("application/json")
        return body.get("schema") if body else None

    def error_statuses(self) -> set[int]:
        """The 4xx statuses the route documents; a 4XX range or default admits them all."""
        documented = self.operation.get("responses", {})
        if "4XX" in documented or "default" in documented:
            return set(range(400, 500))
        return {int(s) for s in documented if s.isdigit() and 400 <= int(s) < 500}

    def error_schema(self, status: int) -> dict[str, Any] | None:
        """The schema of the error body for ``status``: its own, the range's, or bad input's.

        413 is answered by the body cap before any route runs, so routes do not
        list it; its body must still have the surface's shape, that of bad input.
        """
        documented = self.operation.get("responses", {})
        for key in (str(status), "4XX", "default", "422", "400"):
            content = documented.get(key, {}).get("content", {}).get("application/json")
            if content and content.get("schema"):
                schema: dict[str, Any] = content["schema"]
                return schema
        return None


def write_routes(openapi: dict[str, Any]) -> list[Route]:
    return [
        Route(method, path, operation)
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
        if method in WRITE_METHODS
    ]


# -- schemas -------------------------------------------------------------------------------


class Schemas:
    """Just enough of JSON Schema over one OpenAPI document: walk to a leaf, validate."""

    def __init__(self, openapi: dict[str, Any]) -> None:
        self.openapi = openapi
        self._validators: dict[str, Any] = {}

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.openapi
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def branches(self, schema: dict[str, Any]) -> list[dict[str, Any]]:
        schema = self.resolve(schema)
        options = schema.get("anyOf") or schema.get("oneOf")
        if not options:
            return [schema]
        return [b for option in options for b in self.branches(option)]

    def at(self, schema: dict[str, Any], path: tuple[str | int, ...]) -> list[dict[str, Any]]:
        """Every schema that may describe the value at ``path`` under ``schema``."""
        found = self.branches(schema)
        for step in path:
            below: list[dict[str, Any]] = []
            for branch in found:
                if isinstance(step, int) and "items" in branch:
                    below += self.branches(branch["items"])
                elif isinstance(step, str):
                    if step in branch.get("properties", {}):
                        below += self.branches(branch["properties"][step])
                    elif isinstance(branch.get("additionalProperties"), dict):
                        below += self.branches(branch["additionalProperties"])
                    elif branch.get("additionalProperties", True) is True and not branch.get(
                        "properties"
                    ):
                        below.append({})
            found = below
        return found

    def accepts(self, schema: dict[str, Any], value: Any) -> bool:
        wrapped = {**schema, "components": self.openapi.get("components", {})}
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            self._validators[key] = jsonschema_rs.validator_for(wrapped)
        return bool(self._validators[key].is_valid(value))

    def accepts_any(self, schemas: list[dict[str, Any]], value: Any) -> bool:
        # No schema found means the field is unknown to the document: treat it as open.
        return not schemas or any(self.accepts(s, value) for s in schemas)

    def example(self, schema: dict[str, Any], depth: int = 0) -> Any:
        """A plain value for a route without an entry in EXAMPLES: required fields only."""
        schema = self.branches(schema)[0]
        if "examples" in schema:
            return schema["examples"][0]
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if kind == "object" and depth < 8:
            props = schema.get("properties", {})
            return {
                name: self.example(props[name], depth + 1)
                for name in schema.get("required", [])
                if name in props
            }
        if kind == "array":
            return []
        if kind in ("integer", "number"):
            return 1
        if kind == "boolean":
            return False
        return "x"


# -- mutating a valid body -------------------------------------------------------------

Path = tuple[str | int, ...]


def leaves(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path, value


def maps(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every object in the body, for renaming one of its keys."""
    if isinstance(value, dict):
        yield path
        for key, item in value.items():
            yield from maps(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from maps(item, (*path, index))


def replaced(body: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(body, dict):
        return {k: (replaced(v, rest, new) if k == head else v) for k, v in body.items()}
    return [replaced(v, rest, new) if i == head else v for i, v in enumerate(body)]


def renamed(body: Any, path: Path, old: str, new: str) -> Any:
    if not path:
        return {(new if k == old else k): v for k, v in body.items()}
    head, rest = path[0], path[1:]
    if isinstance(body, dict):
        return {k: (renamed(v, rest, old, new) if k == head else v) for k, v in body.items()}
    return [renamed(v, rest, old, new) if i == head else v for i, v in enumerate(body)]


def get(body: Any, path: Path) -> Any:
    for step in path:
        body = body[step]
    return body


@st.composite
def tainted_text(draw: st.DrawFn, text: str) -> str:
    """``text`` with one to three forbidden characters put somewhere inside it."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(BAD_CHARS)) + text[at:]
    return text


def not_utf8(text: str) -> Raw:
    """The string with bytes that are no UTF-8 in the middle (a truncated sequence)."""
    quoted = json.dumps(text, ensure_ascii=True).encode("ascii")
    return Raw(quoted[:-1] + b"\xc3\x28" + quoted[-1:])


@dataclass(frozen=True)
class Attack:
    """One hostile request: what was changed, for the failure message, and the body sent."""

    what: str
    path: str
    body: bytes | None


@dataclass
class Target:
    """A route made concrete: its path with real ids, and a body it would accept."""

    route: Route
    path_values: dict[str, str]
    body: Any
    # Number fields that are amounts: 2^63 - 1 there carries a counter already in use past 63 bits.
    amounts: list[Path] = field(default_factory=list)

    def url(self, overrides: dict[str, str] | None = None) -> str:
        values = {name: quote(v, safe=":") for name, v in self.path_values.items()}
        values.update(overrides or {})
        return self.route.path.format(**values)


@dataclass(frozen=True)
class Change:
    """One leaf replaced by ``value``, or (with ``key``) that key of an object renamed to it."""

    note: str
    path: Path
    value: Any
    key: str | None = None

    def apply(self, body: Any) -> Any:
        if self.key is not None:
            return renamed(body, self.path, self.key, self.value)
        return replaced(body, self.path, self.value)


def _shown(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text[:24].decode("ascii", "replace") + ("..." if len(value.text) > 24 else "")
    return ascii(value)[:60]


@st.composite
def replacing(draw: st.DrawFn, kind: str, path: Path, values: st.SearchStrategy[Any]) -> Change:
    value = draw(values)
    return Change(f"[{kind}] {_shown(value)} at {path}", path, value)


@st.composite
def renaming(draw: st.DrawFn, path: Path, key: str) -> Change:
    new = draw(tainted_text(key))
    return Change(f"[text key] {new!a} at {path}", path, new, key)


def body_attacks(target: Target, schemas: Schemas) -> st.SearchStrategy[Attack]:
    """Mutations of one or two leaves of the valid body, each forbidden where it lands."""
    body = target.body
    schema = target.route.body_schema()
    assert schema is not None
    url = target.url()

    options: list[st.SearchStrategy[Change]] = []
    for path, value in leaves(body):
        if path == ():
            continue
        if isinstance(value, str):
            options.append(replacing("text", path, tainted_text(value)))
            options.append(replacing("not UTF-8", path, st.just(not_utf8(value))))
        if isinstance(value, int | float) and not isinstance(value, bool):
            options.append(replacing("past 63 bits", path, st.sampled_from(HUGE)))
            non_numbers = st.sampled_from([Raw(t.encode()) for t in NON_NUMBERS])
            options.append(replacing("no number", path, non_numbers))
        odd = [
            v for v in (None, True, False) if not schemas.accepts_any(schemas.at(schema, path), v)
        ]
        if odd:
            options.append(replacing("null or boolean", path, st.sampled_from(odd)))
        options.append(replacing("nesting", path, st.sampled_from([nested(), nested_objects()])))
    for path in target.amounts:
        options.append(st.just(Change(f"[counter past 63 bits] {MAX_63} at {path}", path, MAX_63)))
    for path in maps(body):
        # Only keys a map may choose (amounts, tags, metadata); a renamed fixed field is
        # merely unknown, which some foreign surfaces ignore, as their originals do.
        if any(not b.get("properties") for b in schemas.at(schema, path)):
            options += [renaming(path, key) for key in get(body, path)]
    if isinstance(body, dict) and isinstance(body.get("amounts"), dict):
        half = 2**62
        split = {"input_tokens": half, "output_tokens": half}
        options.append(
            st.just(Change("[sum past 63 bits] input_tokens + output_tokens", ("amounts",), split))
        )

    @st.composite
    def attack(draw: st.DrawFn) -> Attack:
        changed = body
        notes = []
        for _ in range(draw(st.integers(1, 2))):
            change = draw(st.one_of(options))
            try:
                changed = change.apply(changed)
            except (KeyError, IndexError, TypeError, AttributeError):
                continue  # the first change removed what the second one names
            notes.append(change.note)
        return Attack("; ".join(notes), url, encode(changed))

    return attack()


def sweep(target: Target, schemas: Schemas) -> list[Attack]:
    """Each kind of hostile value once at every leaf (and key), so none depends on luck."""
    body = target.body
    schema = target.route.body_schema()
    assert schema is not None
    changes: list[Change] = []
    for path, value in leaves(body):
        if path == ():
            continue
        if isinstance(value, str):
            middle = len(value) // 2
            for bad in ("\x00", "\x1b", "\x85", "\ud800"):
                tainted = value[:middle] + bad + value[middle:]
                changes.append(Change(f"[text] {tainted!a} at {path}", path, tainted))
            changes.append(Change(f"[not UTF-8] at {path}", path, not_utf8(value)))
        if isinstance(value, int | float) and not isinstance(value, bool):
            changes.append(Change(f"[past 63 bits] 2**63 at {path}", path, 2**63))
            changes.append(Change(f"[no number] NaN at {path}", path, Raw(b"NaN")))
        for odd in (None, True):
            if not schemas.accepts_any(schemas.at(schema, path), odd):
                changes.append(Change(f"[null or boolean] {odd} at {path}", path, odd))
        changes.append(Change(f"[nesting] lists {DEPTH} deep at {path}", path, nested()))
    for path in maps(body):
        if any(not b.get("properties") for b in schemas.at(schema, path)):
            for key in get(body, path):
                changes.append(
                    Change(f"[text key] NUL in {key!a} at {path}", path, key + "\x00", key)
                )
    for path in target.amounts:
        changes.append(Change(f"[counter past 63 bits] {MAX_63} at {path}", path, MAX_63))
    if isinstance(body, dict) and isinstance(body.get("amounts"), dict):
        split = {"input_tokens": 2**62, "output_tokens": 2**62}
        changes.append(
            Change("[sum past 63 bits] input_tokens + output_tokens", ("amounts",), split)
        )
    url = target.url()
    return [Attack(change.note, url, encode(change.apply(body))) for change in changes]


def whole_body_attacks(target: Target) -> list[Attack]:
    url = target.url()
    return [
        Attack(f"[oversize] a body of {OVERSIZE} bytes", url, encode(padded(target.body))),
        Attack(f"[nesting] a body of lists nested {DEPTH} deep", url, nested().text),
        Attack("[text] a body of a lone surrogate", url, b'"\\ud800"'),
        Attack("[not UTF-8] a body that is no UTF-8", url, b'{"\xff": 1}'),
        Attack("[no number] a body of NaN", url, b"NaN"),
    ]


def padded(body: Any) -> Any:
    """The body with its first text made too long for the body cap (or padding beside it)."""
    for path, value in leaves(body):
        if isinstance(value, str) and path:
            return replaced(body, path, value + "a" * OVERSIZE)
    return {"padding": "a" * OVERSIZE, "body": body}


def path_attacks(target: Target) -> list[Attack]:
    body = encode(target.body) if target.route.body_schema() is not None else None
    return [
        Attack(f"[path] {{{name}}} = {value[:40]}", target.url({name: value}), body)
        for name in target.route.params
        for value in HOSTILE_PATHS
    ]


# Query values, percent-encoded: text no field may hold, and for a parameter that is not
# free text (a number, a UUID) values that are no such thing.
HOSTILE_QUERY_TEXT = ["%00", "a%01b", "a%7Fb", "a%C2%85b", "%ED%A0%80", "%FF"]
HOSTILE_QUERY_VALUES = ["9223372036854775808", "-9223372036854775809", "true", "NaN", "a" * 5_000]


def query_attacks(target: Target, schemas: Schemas) -> list[Attack]:
    """Each query parameter the route documents, hostile, beside the valid body.

    Under its own name and lower-cased too: a surface that matches names without
    regard to case (BokaMera's) reads it by a path of its own.
    """
    body = encode(target.body) if target.route.body_schema() is not None else None
    attacks = []
    for param in target.route.operation.get("parameters", []):
        if param.get("in") != "query":
            continue
        name = param["name"]
        schema = schemas.branches(param.get("schema", {}))
        free_text = any(b.get("type") == "string" and not b.get("format") for b in schema)
        values = HOSTILE_QUERY_TEXT + ([] if free_text else HOSTILE_QUERY_VALUES)
        for spelled in dict.fromkeys((name, name.lower())):
            for value in values:
                url = f"{target.url()}?{quote(spelled)}={value}"
                attacks.append(Attack(f"[query] {spelled}={value[:40]}", url, body))
    return attacks


def resolve_example(template: Any, values: dict[str, str]) -> Any:
    """The example with ``{name}`` placeholders in its strings filled in from the seed."""
    if isinstance(template, str):
        return template.format(**values) if "{" in template else template
    if isinstance(template, dict):
        return {k: resolve_example(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve_example(v, values) for v in template]
    return template


Snapshot = dict[str, Any]


class Tables:
    """Every row of every table of the store, read on a connection of its own.

    Comparing whole tables is what "nothing changed" means: the ledger, counters,
    holds, idempotency answers, the audit log, keys and quotas alike, including
    tables added after this was written. The server's clock is frozen, so a
    read cannot expire anything between two looks.
    """

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        reflected = sa.MetaData()
        reflected.reflect(self.engine)
        self.tables = list(reflected.sorted_tables)

    def snapshot(self) -> Snapshot:
        with self.engine.connect() as conn:
            return {
                table.name: sorted(repr(tuple(row)) for row in conn.execute(sa.select(table)))
                for table in self.tables
            }

    def close(self) -> None:
        self.engine.dispose()
