"""Subjects (contract §1): references, metadata, parents and the acyclic hierarchy."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota import Conflict, CycleError, SubjectRef, ValidationError
from tokenquota.domain.subjects import (
    MAX_ANCESTORS,
    MAX_METADATA_BYTES,
    MAX_NAME_LENGTH,
    MAX_PARENTS,
    ancestors_of,
    check_acyclic,
    parse_kind,
    validate_metadata,
    validate_name,
    validate_parents,
)

KIND = r"[a-z][a-z0-9_-]{0,31}"
ID = r"[A-Za-z0-9._@-]{1,128}"


def ref(value: str) -> SubjectRef:
    return SubjectRef.parse(value)


def graph(edges: Mapping[str, Iterable[str]]) -> Callable[[SubjectRef], list[SubjectRef]]:
    """A parents_of function over ``child -> parents`` written as strings."""
    table = {ref(child): [ref(p) for p in parents] for child, parents in edges.items()}

    def parents_of(subject: SubjectRef) -> list[SubjectRef]:
        return list(table.get(subject, []))

    return parents_of


# ---------------------------------------------------------------------------
# SubjectRef.parse
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "ident"),
    [
        ("user:alice", "user", "alice"),
        ("company:acme", "company", "acme"),
        ("group:research", "group", "research"),
        ("workspace:w1", "workspace", "w1"),
        ("deployment:llama-70b", "deployment", "llama-70b"),
        ("key:k_12", "key", "k_12"),
        (
            "user:550e8400-e29b-41d4-a716-446655440000",
            "user",
            "550e8400-e29b-41d4-a716-446655440000",
        ),
        (
            "user:550E8400-E29B-41D4-A716-446655440000",
            "user",
            "550E8400-E29B-41D4-A716-446655440000",
        ),
        ("user:alice@example.com", "user", "alice@example.com"),
        ("user:Alice.Smith", "user", "Alice.Smith"),
        ("a:b", "a", "b"),
        ("a1:0", "a1", "0"),
        ("api_key:x", "api_key", "x"),
        ("service-account:sa-1", "service-account", "sa-1"),
        ("k" + "x" * 31 + ":id", "k" + "x" * 31, "id"),
        ("user:" + "a" * 128, "user", "a" * 128),
        ("user:...", "user", "..."),
        ("user:-", "user", "-"),
        ("user:@", "user", "@"),
    ],
)
def test_parse_valid(value: str, kind: str, ident: str) -> None:
    subject = SubjectRef.parse(value)
    assert (subject.kind, subject.id) == (kind, ident)
    assert str(subject) == value
    assert SubjectRef.parse(str(subject)) == subject
    assert SubjectRef.parse(subject) is subject


@pytest.mark.parametrize(
    "value",
    [
        "",
        ":",
        "user",
        "user:",
        ":alice",
        "User:alice",
        "USER:alice",
        "1user:alice",
        "_user:alice",
        "-user:alice",
        "us er:alice",
        "user.x:alice",
        "usér:alice",
        "k" + "x" * 32 + ":id",  # kind of 33 characters
        "user:" + "a" * 129,  # id of 129 characters
        "user:a:b",
        "user:a b",
        "user: alice",
        "user:alice ",
        " user:alice",
        "user:alice\n",
        "user:al/ice",
        "user:al\\ice",
        "user:alïce",
        "user:al+ice",
        "user:{alice}",
        "user:alice%20",
        "user:*",
        "user:\x00",
        "user::alice",
    ],
)
def test_parse_invalid(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        SubjectRef.parse(value, "parents[3]")
    assert info.value.field == "parents[3]"
    assert info.value.status == 422
    assert info.value.details["field"] == "parents[3]"


@pytest.mark.parametrize("value", [None, 1, b"user:alice", ("user", "alice"), {"kind": "user"}])
def test_parse_non_strings(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        SubjectRef.parse(value)
    assert info.value.field == "subject"


@settings(max_examples=200)
@given(st.from_regex(KIND, fullmatch=True), st.from_regex(ID, fullmatch=True))
def test_parse_accepts_every_valid_form(kind: str, ident: str) -> None:
    subject = SubjectRef.parse(f"{kind}:{ident}")
    assert subject == SubjectRef(kind, ident)
    assert str(subject) == f"{kind}:{ident}"


@settings(max_examples=200)
@given(st.uuids())
def test_uuids_fit(uuid: object) -> None:
    assert SubjectRef.parse(f"key:{uuid}").id == str(uuid)


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_parse_agrees_with_the_spec_regexes(text: str) -> None:
    kind, sep, ident = text.partition(":")
    valid = (
        bool(sep) and re.fullmatch(KIND, kind) is not None and re.fullmatch(ID, ident) is not None
    )
    if valid:
        assert str(SubjectRef.parse(text)) == text
    else:
        with pytest.raises(ValidationError):
            SubjectRef.parse(text)


def test_refs_order_and_hash() -> None:
    assert sorted([ref("user:b"), ref("company:z"), ref("user:a")]) == [
        ref("company:z"),
        ref("user:a"),
        ref("user:b"),
    ]
    assert len({ref("user:a"), SubjectRef("user", "a")}) == 1


def test_parse_kind() -> None:
    assert parse_kind("user") == "user"
    for bad in ["", "User", "1x", "x" * 33, None, 3]:
        with pytest.raises(ValidationError) as info:
            parse_kind(bad, "defaults[0].kind")
        assert info.value.field == "defaults[0].kind"


def test_validate_name() -> None:
    assert validate_name(None) is None
    assert validate_name("Alice Smith") == "Alice Smith"
    assert validate_name("x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH
    for bad in ["x" * (MAX_NAME_LENGTH + 1), 3, ["a"]]:
        with pytest.raises(ValidationError) as info:
            validate_name(bad, "subject.name")
        assert info.value.field == "subject.name"


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


def test_metadata_at_most_16_kib() -> None:
    assert MAX_METADATA_BYTES == 16 * 1024
    overhead = len('{"k":""}')
    exactly = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert validate_metadata(exactly) == exactly
    with pytest.raises(ValidationError) as info:
        validate_metadata({"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}, "body.metadata")
    assert info.value.field == "body.metadata"
    with pytest.raises(ValidationError):
        validate_metadata({str(i): i for i in range(3000)})


def test_metadata_values() -> None:
    assert validate_metadata(None) == {}
    assert validate_metadata({}) == {}
    nested = {"plan": "gold", "tags": ["a", "b"], "limits": {"x": 1.5, "y": None, "z": True}}
    assert validate_metadata(nested) == nested
    for bad in [[1, 2], "text", 5, {"x": float("nan")}, {"x": float("inf")}, {"x": object()}]:
        with pytest.raises(ValidationError) as info:
            validate_metadata(bad)
        assert info.value.field == "metadata"


# ---------------------------------------------------------------------------
# Parents
# ---------------------------------------------------------------------------

ALICE = ref("user:alice")


def test_validate_parents() -> None:
    parents = validate_parents(ALICE, ["company:acme", ref("group:research")])
    assert parents == (ref("company:acme"), ref("group:research"))
    assert validate_parents(ALICE, []) == ()
    # Repeats collapse, keeping the first occurrence's order.
    assert validate_parents(ALICE, ["group:b", "group:a", "group:b"]) == (
        ref("group:b"),
        ref("group:a"),
    )


def test_self_parent_is_a_cycle() -> None:
    with pytest.raises(CycleError) as info:
        validate_parents(ALICE, ["company:acme", "user:alice"])
    assert isinstance(info.value, Conflict)
    assert info.value.status == 409
    assert info.value.code == "parent_cycle"
    assert info.value.details["field"] == "parents"
    with pytest.raises(CycleError):
        validate_parents(ALICE, [ALICE])


def test_at_most_16_parents() -> None:
    assert MAX_PARENTS == 16
    sixteen = [f"group:g{i}" for i in range(16)]
    assert len(validate_parents(ALICE, sixteen)) == 16
    # Repeats do not count twice.
    assert len(validate_parents(ALICE, sixteen + sixteen[:5])) == 16
    with pytest.raises(ValidationError) as info:
        validate_parents(ALICE, [*sixteen, "group:g16"], "body.parents")
    assert info.value.field == "body.parents"


def test_bad_parent_names_its_index() -> None:
    with pytest.raises(ValidationError) as info:
        validate_parents(ALICE, ["company:acme", "Company:acme"])
    assert info.value.field == "parents[1]"
    with pytest.raises(ValidationError) as info:
        validate_parents(ALICE, [None], "body.parents")
    assert info.value.field == "body.parents[0]"


# ---------------------------------------------------------------------------
# The hierarchy
# ---------------------------------------------------------------------------


def test_ancestors_of_a_chain() -> None:
    parents_of = graph({"user:alice": ["group:team"], "group:team": ["company:acme"]})
    assert ancestors_of(ALICE, parents_of) == [ref("group:team"), ref("company:acme")]
    assert ancestors_of(ref("company:acme"), parents_of) == []


def test_ancestors_of_a_diamond_lists_each_once_nearest_first() -> None:
    parents_of = graph(
        {
            "user:alice": ["group:a", "group:b"],
            "group:a": ["company:acme"],
            "group:b": ["company:acme"],
            "company:acme": ["holding:h"],
        }
    )
    assert ancestors_of(ALICE, parents_of) == [
        ref("group:a"),
        ref("group:b"),
        ref("company:acme"),
        ref("holding:h"),
    ]


def test_ancestors_of_are_breadth_first() -> None:
    parents_of = graph(
        {
            "user:alice": ["group:team", "company:acme"],
            "group:team": ["company:acme", "holding:h"],
        }
    )
    assert ancestors_of(ALICE, parents_of) == [
        ref("group:team"),
        ref("company:acme"),
        ref("holding:h"),
    ]


def test_ancestors_of_terminates_on_a_corrupt_cycle() -> None:
    parents_of = graph(
        {"user:alice": ["group:a"], "group:a": ["group:b"], "group:b": ["user:alice"]}
    )
    assert ancestors_of(ALICE, parents_of) == [ref("group:a"), ref("group:b")]


def test_ancestor_bound() -> None:
    def chain(length: int) -> Callable[[SubjectRef], list[SubjectRef]]:
        edges = {"user:alice": ["group:g0"]}
        edges.update({f"group:g{i}": [f"group:g{i + 1}"] for i in range(length - 1)})
        return graph(edges)

    assert len(ancestors_of(ALICE, chain(MAX_ANCESTORS))) == MAX_ANCESTORS
    with pytest.raises(ValidationError) as info:
        ancestors_of(ALICE, chain(MAX_ANCESTORS + 1))
    assert info.value.field == "parents"


DIAMOND = {
    "user:alice": ["group:a", "group:b"],
    "group:a": ["company:acme"],
    "group:b": ["company:acme"],
}


@pytest.mark.parametrize(
    ("child", "parents"),
    [
        ("company:acme", ["user:alice"]),  # would close alice -> a -> acme -> alice
        ("company:acme", ["group:b"]),
        ("group:a", ["user:alice"]),
        ("group:b", ["holding:h", "user:alice"]),
    ],
)
def test_check_acyclic_refuses_a_cycle(child: str, parents: list[str]) -> None:
    with pytest.raises(CycleError) as info:
        check_acyclic(ref(child), [ref(p) for p in parents], graph(DIAMOND))
    assert info.value.details["field"] == "parents"
    assert info.value.details["parent"] in parents
    assert info.value.status == 409


@pytest.mark.parametrize(
    ("child", "parents"),
    [
        ("user:alice", ["company:acme"]),  # already an ancestor: a shortcut, not a cycle
        ("group:a", ["group:b"]),  # siblings
        ("company:acme", ["holding:h"]),
        ("user:bob", ["user:alice", "group:a"]),
        ("user:alice", []),
    ],
)
def test_check_acyclic_allows(child: str, parents: list[str]) -> None:
    check_acyclic(ref(child), [ref(p) for p in parents], graph(DIAMOND))


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=25),
    st.integers(0, 9),
    st.integers(0, 9),
)
def test_ancestors_and_cycles_on_random_dags(
    pairs: list[tuple[int, int]], child: int, parent: int
) -> None:
    # Edges child -> parent with child < parent only: a DAG by construction.
    edges: dict[int, list[int]] = {}
    for a, b in pairs:
        low, high = sorted((a, b))
        if low != high and high not in edges.setdefault(low, []):
            edges[low].append(high)

    def node(i: int) -> SubjectRef:
        return SubjectRef("group", f"g{i}")

    def parents_of(subject: SubjectRef) -> list[SubjectRef]:
        return [node(p) for p in edges.get(int(subject.id[1:]), [])]

    def reachable(start: int) -> set[int]:
        seen: set[int] = set()
        todo = list(edges.get(start, []))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(edges.get(n, []))
        return seen

    found = ancestors_of(node(child), parents_of)
    assert len(found) == len(set(found))
    assert set(found) == {node(i) for i in reachable(child)}
    assert node(child) not in found
    if child == parent:
        return  # a self-parent is validate_parents' to refuse
    if child in reachable(parent):
        with pytest.raises(CycleError):
            check_acyclic(node(child), [node(parent)], parents_of)
    else:
        check_acyclic(node(child), [node(parent)], parents_of)


def test_metadata_size_is_measured_in_utf8_bytes() -> None:
    accented = {"note": "é" * 6_000}  # 12,000 bytes in UTF-8, 36,000 if escaped
    assert validate_metadata(accented) == accented
    with pytest.raises(ValidationError) as caught:
        validate_metadata({"note": "é" * 9_000})  # 18,000 bytes
    assert caught.value.field == "metadata"


def test_parsing_the_same_text_again_answers_the_same_ref_and_the_same_errors() -> None:
    """``SubjectRef.parse`` remembers refs it parsed from text; never a refusal."""
    first = SubjectRef.parse("user:remembered")
    assert SubjectRef.parse("user:remembered") == first == SubjectRef("user", "remembered")
    for _ in range(2):
        with pytest.raises(ValidationError):
            SubjectRef.parse("user:not valid", "owner")
        with pytest.raises(ValidationError):
            SubjectRef.parse("User:x")
