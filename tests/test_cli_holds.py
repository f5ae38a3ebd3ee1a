"""The command line for holds, resource quotas and grants, end to end.

Reservations, leases, resource quotas and prepaid credits, each run as real
commands against a real SQLite file, and checked against what the other
commands (usage, consume, check, audit) then see.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tokenquota.cli import app

Run = Callable[..., Result]

BASE_ENV: dict[str, str | None] = {
    # Every command reads TOKENQUOTA_* (a config file too): none of the runner's leaks in.
    **{name: None for name in os.environ if name.startswith("TOKENQUOTA_")},
    "COLUMNS": "250",  # wide enough that table cells never wrap
    "NO_COLOR": "1",
    "TOKENQUOTA_ACTOR": "tester",
    "TOKENQUOTA_TIMEZONE": None,
    "TOKENQUOTA_DB": None,
}

QUOTA: dict[str, Any] = {
    "capacity": {"value": 3, "units": "requests"},
    "saturation_threshold": "0.5",
    "default_rules": [{"metric": "requests", "window": "minute", "limit": 100}],
    "policies": [
        {"consumer": "group:research", "rules": [], "reserved": "0.25"},
        {
            "consumer": "user:carol",
            "rules": [{"metric": "tokens", "window": "day", "limit": 5000}],
        },
    ],
}


def invoke(
    *args: str, env: dict[str, str | None] | None = None, stdin: str | None = None
) -> Result:
    return CliRunner().invoke(app, list(args), env={**BASE_ENV, **(env or {})}, input=stdin)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template-holds") / "quota.db"
    result = invoke("migrate", "--db", f"sqlite:///{path}")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def cli(template_db: Path, tmp_path: Path) -> Run:
    path = tmp_path / "quota.db"
    shutil.copyfile(template_db, path)
    db_url = f"sqlite:///{path}"

    def run(
        *args: str, env: dict[str, str | None] | None = None, stdin: str | None = None
    ) -> Result:
        return invoke(*args, env={"TOKENQUOTA_DB": db_url, **(env or {})}, stdin=stdin)

    return run


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def denied(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr == ""
    return result.stdout


def bad_input(result: Result, field: str) -> str:
    """Exit code 2 and one stderr line naming the field; never a traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert field in lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def field(out: str, name: str) -> str:
    """The value of a ``name   value`` line of a command's output."""
    return next(line.split(None, 1)[1] for line in out.splitlines() if line.split()[:1] == [name])


def usage_of(run: Run, subject: str, metric: str) -> dict[str, Any]:
    rows = as_json(run("usage", subject, "--json"))["limits"]
    found: dict[str, Any] = next(
        r for r in rows if r["subject"] == subject and r["metric"] == metric
    )
    return found


def test_help_names_every_new_command() -> None:
    out = ok(invoke("--help"))
    for group in ("reservations", "leases", "resources", "grants"):
        assert group in out
    expected = {
        "reservations": ("create", "commit", "release", "show"),
        "leases": ("acquire", "release", "heartbeat", "show"),
        "resources": ("set", "show", "list", "delete"),
        "grants": ("add", "list"),
    }
    for group, commands in expected.items():
        listed = ok(invoke(group, "--help"))
        for command in commands:
            assert command in listed
    for command in ("consume", "check"):
        assert "--resource" in ok(invoke(command, "--help"))


# reservations -------------------------------------------------------------------
def test_reservation_holds_budget_until_commit(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "tokens", "day", "1000"))
    out = ok(cli("reservations", "create", "user:alice", "--tokens", "600", "--ttl", "120"))
    assert out.startswith("reserved: user:alice tokens=600")
    reservation_id = field(out, "id")
    expires = field(out, "expires")
    assert expires.endswith("UTC")

    # The hold counts as used for everyone else: usage shows it, and it blocks.
    tokens = usage_of(cli, "user:alice", "tokens")
    assert (tokens["used"], tokens["reserved"], tokens["remaining"]) == (0, 600, 400)
    assert cli("consume", "user:alice", "--tokens", "500").exit_code == 1

    shown = ok(cli("reservations", "show", reservation_id))
    assert field(shown, "state") == "held"
    assert field(shown, "amounts") == "tokens=600 requests=1"
    assert field(shown, "expires") == expires
    data = as_json(cli("reservations", "show", reservation_id, "--json"))
    assert (data["id"], data["subject"], data["state"]) == (reservation_id, "user:alice", "held")
    assert data["amounts"]["tokens"] == 600
    lifetime = datetime.fromisoformat(data["expires_at"]) - datetime.fromisoformat(
        data["created_at"]
    )
    assert lifetime == timedelta(seconds=120)

    committed = ok(cli("reservations", "commit", reservation_id, "--tokens", "250"))
    assert committed.startswith("committed: user:alice tokens=250")
    tokens = usage_of(cli, "user:alice", "tokens")
    assert (tokens["used"], tokens["reserved"], tokens["remaining"]) == (250, 0, 750)
    assert as_json(cli("reservations", "show", reservation_id, "--json"))["state"] == "committed"

    # A repeat replays the first answer and charges nothing more.
    replay = as_json(cli("reservations", "commit", reservation_id, "--tokens", "999", "--json"))
    assert replay["replayed"] is True
    assert replay["amounts"]["tokens"] == 250
    assert usage_of(cli, "user:alice", "tokens")["used"] == 250
    assert "nothing to free" in ok(cli("reservations", "release", reservation_id))


def test_commit_without_amounts_records_the_estimate(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "tokens", "day", "1000"))
    reservation_id = ok(
        cli("reservations", "create", "user:alice", "--input-tokens", "30", "--quiet")
    ).strip()
    decision = as_json(cli("reservations", "commit", reservation_id, "--json"))
    assert decision["allowed"] is True
    assert decision["mode"] == "record"
    assert decision["amounts"]["tokens"] == 30
    assert usage_of(cli, "user:alice", "tokens")["used"] == 30


def test_release_frees_the_hold(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "tokens", "day", "100"))
    created = as_json(cli("reservations", "create", "user:alice", "--tokens", "100", "--json"))
    assert created["decision"]["allowed"] is True
    reservation_id = created["reservation"]["id"]
    assert usage_of(cli, "user:alice", "tokens")["reserved"] == 100

    assert "released" in ok(cli("reservations", "release", reservation_id))
    assert usage_of(cli, "user:alice", "tokens")["reserved"] == 0
    assert as_json(cli("reservations", "release", reservation_id, "--json")) == {"released": False}
    assert as_json(cli("reservations", "show", reservation_id, "--json"))["state"] == "released"
    # A released hold is gone: a commit is refused, naming why.
    line = bad_input(cli("reservations", "commit", reservation_id), reservation_id)
    assert "released" in line
    ok(cli("consume", "user:alice", "--tokens", "100"))


def test_refused_reservation_exits_1_and_holds_nothing(cli: Run) -> None:
    ok(cli("limits", "set", "user:alice", "requests", "day", "1"))
    ok(cli("reservations", "create", "user:alice"))
    out = denied(cli("reservations", "create", "user:alice", "--tokens", "5"))
    assert out.startswith("denied: user:alice")
    assert "blocked by" in out
    assert "retry_after: " in out

    refused = cli("reservations", "create", "user:alice", "--json")
    data = as_json(refused)
    assert refused.exit_code == 1
    assert data["reservation"] is None
    assert data["decision"]["allowed"] is False
    assert isinstance(data["decision"]["retry_after"], int)
    assert [(b["subject"], b["metric"]) for b in data["decision"]["blocked_by"]] == [
        ("user:alice", "requests")
    ]
    assert cli("reservations", "create", "user:alice", "--quiet").stdout == ""
    assert usage_of(cli, "user:alice", "requests")["reserved"] == 1


def test_reservations_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("reservations", "create", "user:alice", "--ttl", "soon"), "ttl")
    bad_input(cli("reservations", "create", "user:alice", "--ttl", "0"), "ttl")
    bad_input(cli("reservations", "create", "user:alice", "--ttl", "86401"), "ttl")
    bad_input(cli("reservations", "create", "user:alice", "--ttl", "nan"), "ttl")
    bad_input(cli("reservations", "create", "user:alice", "--tokens", "-1"), "amounts.tokens")
    bad_input(cli("reservations", "create", "alice"), "subject")
    bad_input(cli("reservations", "create", "user:alice", "--resource", "gpu"), "resource")
    bad_input(cli("reservations", "show", "nope"), "id")
    bad_input(cli("reservations", "commit", "nope"), "id")
    bad_input(cli("reservations", "release", "nope"), "id")
    bad_input(cli("reservations", "show", "x" * 65), "id")
    assert ok(cli("events", "--format", "jsonl")) == ""  # nothing was charged


# leases ---------------------------------------------------------------------------
def test_lease_lifecycle(cli: Run) -> None:
    ok(cli("limits", "set", "user:bob", "concurrent_requests", "-", "1"))
    out = ok(cli("leases", "acquire", "user:bob", "--ttl", "30"))
    assert out.startswith("acquired: a concurrency slot for user:bob")
    lease_id = field(out, "id")

    full = denied(cli("leases", "acquire", "user:bob"))
    assert "blocked by" in full
    assert "concurrent_requests" in full
    refused = as_json(cli("leases", "acquire", "user:bob", "--json"))
    assert refused["lease"] is None
    assert refused["decision"]["allowed"] is False
    assert 0 < refused["decision"]["retry_after"] <= 30

    before = as_json(cli("leases", "show", lease_id, "--json"))
    assert (before["state"], before["subject"]) == ("held", "user:bob")
    beat = as_json(cli("leases", "heartbeat", lease_id, "--ttl", "600", "--json"))
    assert datetime.fromisoformat(beat["expires_at"]) > datetime.fromisoformat(before["expires_at"])
    assert "expires" in ok(cli("leases", "heartbeat", lease_id))
    assert field(ok(cli("leases", "show", lease_id)), "state") == "held"

    assert "released" in ok(cli("leases", "release", lease_id))
    assert as_json(cli("leases", "release", lease_id, "--json")) == {"released": False}
    shown = ok(cli("leases", "show", lease_id))
    assert field(shown, "state") == "released"
    assert field(shown, "released").endswith("UTC")
    bad_input(cli("leases", "heartbeat", lease_id), lease_id)  # gone: acquire a new one
    # The slot is free again.
    second = ok(cli("leases", "acquire", "user:bob", "--quiet")).strip()
    assert len(second) == 32
    assert second != lease_id


def test_leases_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("leases", "acquire", "user:bob", "--ttl", "1m"), "ttl")
    bad_input(cli("leases", "acquire", "user:bob", "--ttl", "0.5"), "ttl")
    bad_input(cli("leases", "acquire", "bob"), "subject")
    bad_input(cli("leases", "show", "nope"), "id")
    bad_input(cli("leases", "release", "nope"), "id")
    bad_input(cli("leases", "heartbeat", "nope"), "id")
    lease_id = ok(cli("leases", "acquire", "user:bob", "--quiet")).strip()
    bad_input(cli("leases", "heartbeat", lease_id, "--ttl", "100000"), "ttl")


# resource quotas --------------------------------------------------------------------
def test_resources_set_show_list_delete(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "quota.json"
    path.write_text(json.dumps(QUOTA))
    out = ok(cli("resources", "set", "deployment:llama", "--file", str(path)))
    assert "quota set on deployment:llama" in out

    shown = ok(cli("resources", "show", "deployment:llama"))
    assert "3 requests per minute" in shown
    assert "0.5" in shown
    assert "requests/minute 100" in shown
    assert "group:research" in shown
    assert "0.25" in shown
    assert "tokens/day 5,000" in shown

    data = as_json(cli("resources", "show", "deployment:llama", "--json"))
    assert data["resource"] == "deployment:llama"
    assert data["capacity"] == QUOTA["capacity"]
    assert data["saturation_threshold"] == "0.5"
    assert data["default_rules"] == QUOTA["default_rules"]
    assert [(p["consumer"], p["reserved"]) for p in data["policies"]] == [
        ("group:research", "0.25"),
        ("user:carol", None),
    ]

    # Inline JSON replaces the whole quota; shares stay exact (no float on the way).
    inline = (
        '{"policies": [{"consumer": "user:a", "rules": [], "reserved": 0.12345678901234567891}]}'
    )
    ok(cli("resources", "set", "deployment:small", "--json", inline))
    small = as_json(cli("resources", "show", "deployment:small", "--json"))
    assert small["policies"][0]["reserved"] == "0.12345678901234567891"
    assert small["capacity"] is None

    listed = ok(cli("resources", "list"))
    assert "deployment:llama" in listed
    assert "deployment:small" in listed
    assert "2 of 2 resource quotas shown" in listed
    page = as_json(cli("resources", "list", "--limit", "1", "--json"))
    assert (page["total"], len(page["items"])) == (2, 1)

    assert "deleted" in ok(cli("resources", "delete", "deployment:small"))
    bad_input(cli("resources", "show", "deployment:small"), "resource")
    bad_input(cli("resources", "delete", "deployment:small"), "resource")
    audit = as_json(cli("audit", "--json"))["items"]
    assert audit
    assert {entry["actor"] for entry in audit} == {"tester"}


def test_resources_set_reads_standard_input(cli: Run) -> None:
    ok(cli("resources", "set", "deployment:llama", "--file", "-", stdin=json.dumps(QUOTA)))
    assert as_json(cli("resources", "show", "deployment:llama", "--json"))["capacity"]["value"] == 3


def test_resources_bad_input_names_the_field(cli: Run, tmp_path: Path) -> None:
    ref = "deployment:llama"
    bad_input(cli("resources", "set", ref, "--json", "{bad"), "json")
    bad_input(cli("resources", "set", ref, "--json", "[1]"), "json")
    bad_input(cli("resources", "set", ref, "--file", str(tmp_path / "missing.json")), "file")
    (tmp_path / "bad.json").write_text("{")
    bad_input(cli("resources", "set", ref, "--file", str(tmp_path / "bad.json")), "file")
    bad_input(cli("resources", "set", ref), "file")
    bad_input(cli("resources", "set", ref, "--json", "{}", "--file", "x.json"), "file")
    bad_input(cli("resources", "set", ref, "--json", '{"capacity": 5}'), "capacity")
    bad_input(
        cli("resources", "set", ref, "--json", '{"capacity": {"value": 1, "units": "credits"}}'),
        "capacity.units",
    )
    bad_input(cli("resources", "set", ref, "--json", '{"saturation_threshold": 2}'), "threshold")
    over = {
        "policies": [
            {"consumer": "user:a", "rules": [], "reserved": "0.6"},
            {"consumer": "user:b", "rules": [], "reserved": "0.6"},
        ]
    }
    bad_input(cli("resources", "set", ref, "--json", json.dumps(over)), "policies")
    wrong = {"policies": [{"consumer": "user:a", "rules": []}, {"consumer": "user:b"}]}
    bad_input(cli("resources", "set", ref, "--json", json.dumps(wrong)), "policies[1].rules")
    bad_input(cli("resources", "set", "llama", "--json", "{}"), "resource")
    bad_input(cli("resources", "list", "--limit", "0"), "limit")
    assert as_json(cli("resources", "list", "--json"))["total"] == 0  # nothing was stored


def _same_minute() -> tuple[str, str]:
    """One calendar minute for every call of a test (a little ahead, as the engine
    allows), so it cannot straddle a minute boundary."""
    stamp = (datetime.now(UTC) + timedelta(minutes=2)).replace(second=30, microsecond=0)
    return ("--timestamp", stamp.isoformat())


def test_resource_capacity_denies_consume(cli: Run) -> None:
    quota = {"capacity": {"value": 3, "units": "requests"}}
    ok(cli("resources", "set", "deployment:llama", "--json", json.dumps(quota)))
    at = _same_minute()
    ok(cli("consume", "user:dave", "--requests", "2", "--resource", "deployment:llama", *at))
    ok(cli("consume", "user:erin", "--resource", "deployment:llama", *at))
    out = denied(cli("consume", "user:dave", "--resource", "deployment:llama", *at))
    assert out.startswith("denied")
    refused = cli("consume", "user:dave", "--resource", "deployment:llama", "--json", *at)
    decision = as_json(refused)
    assert refused.exit_code == 1
    assert decision["allowed"] is False
    assert [(b["subject"], b["source"]) for b in decision["blocked_by"]] == [
        ("deployment:llama", "capacity")
    ]
    assert isinstance(decision["retry_after"], int)
    assert decision["retry_after"] > 0
    # Without the resource, the consume is not held to its quota.
    ok(cli("consume", "user:dave", *at))
    bad_input(cli("consume", "user:dave", "--resource", "llama"), "resource")
    bad_input(cli("consume", "user:dave", "--resource", "user:dave"), "resource")


def test_check_with_resource_follows_per_consumer_rules(cli: Run) -> None:
    quota = {"default_rules": [{"metric": "requests", "window": "day", "limit": 1}]}
    ok(cli("resources", "set", "deployment:llama", "--json", json.dumps(quota)))
    assert ok(cli("check", "user:dave", "--resource", "deployment:llama")).startswith(
        "would be allowed"
    )
    ok(cli("consume", "user:dave", "--resource", "deployment:llama"))
    checked = denied(cli("check", "user:dave", "--resource", "deployment:llama"))
    assert checked.startswith("would be denied")
    data = as_json(cli("check", "user:dave", "--resource", "deployment:llama", "--json"))
    assert data["allowed"] is False
    ok(cli("check", "user:dave"))  # without the resource its rules do not apply
    bad_input(cli("check", "user:dave", "--resource", "llama"), "resource")


def test_check_with_resource_is_held_to_capacity(cli: Run) -> None:
    quota = {"capacity": {"value": 1, "units": "requests"}}
    ok(cli("resources", "set", "deployment:llama", "--json", json.dumps(quota)))
    at = _same_minute()
    ok(cli("check", "user:dave", "--resource", "deployment:llama", *at))
    ok(cli("consume", "user:dave", "--resource", "deployment:llama", *at))
    denied(cli("check", "user:dave", "--resource", "deployment:llama", *at))


def test_resource_holds_count_against_capacity(cli: Run) -> None:
    quota = {"capacity": {"value": 2, "units": "requests"}}
    ok(cli("resources", "set", "deployment:llama", "--json", json.dumps(quota)))
    reservation_id = ok(
        cli(
            "reservations",
            "create",
            "user:dave",
            "--requests",
            "2",
            "--resource",
            "deployment:llama",
            "--quiet",
        )
    ).strip()
    shown = as_json(cli("reservations", "show", reservation_id, "--json"))
    assert shown["resource"] == "deployment:llama"
    denied(cli("consume", "user:erin", "--resource", "deployment:llama"))
    ok(cli("reservations", "release", reservation_id))
    ok(cli("consume", "user:erin", "--resource", "deployment:llama"))


def test_lease_on_a_resource_follows_its_per_consumer_rules(cli: Run) -> None:
    quota = {"default_rules": [{"metric": "concurrent_requests", "limit": 1}]}
    ok(cli("resources", "set", "deployment:llama", "--json", json.dumps(quota)))
    acquired = as_json(
        cli("leases", "acquire", "user:dave", "--resource", "deployment:llama", "--json")
    )
    assert acquired["lease"]["resource"] == "deployment:llama"
    denied(cli("leases", "acquire", "user:dave", "--resource", "deployment:llama"))
    # Each consumer on its own; and without the resource its rules do not apply.
    ok(cli("leases", "acquire", "user:erin", "--resource", "deployment:llama"))
    ok(cli("leases", "acquire", "user:dave"))


# grants -------------------------------------------------------------------------------
def test_grants_add_list_and_spend(cli: Run) -> None:
    assert "not prepaid" in ok(cli("grants", "list", "user:erin"))
    assert as_json(cli("grants", "list", "user:erin", "--json")) == {"items": [], "balance": None}

    expiry = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    out = ok(cli("grants", "add", "user:erin", "10", "--expires", expiry.isoformat()))
    assert out.startswith("granted 10 credits to user:erin")
    assert field(out, "expires").endswith("UTC")
    forever = as_json(cli("grants", "add", "user:erin", "2.5", "--json"))
    assert (forever["amount"], forever["remaining"], forever["expires_at"]) == ("2.5", "2.5", None)
    assert forever["state"] == "active"

    # Spending burns the grant that expires first.
    ok(cli("consume", "user:erin", "--credits", "10"))
    denied(cli("consume", "user:erin", "--credits", "3"))
    ok(cli("consume", "user:erin", "--credits", "0.5"))

    table = ok(cli("grants", "list", "user:erin"))
    for column in ("id", "amount", "remaining", "granted", "expires", "state"):
        assert column in table
    assert "spent" in table
    assert "never" in table
    assert "balance: 2 credits left of 12.5" in table
    data = as_json(cli("grants", "list", "user:erin", "--json"))
    states = {g["id"]: (g["remaining"], g["state"]) for g in data["items"]}
    assert states[forever["id"]] == ("2", "active")
    assert sorted(states.values()) == [("0", "spent"), ("2", "active")]
    assert data["balance"]["remaining"] == "2"
    assert data["balance"]["granted"] == "12.5"
    assert data["balance"]["next_expiry"] is None


def test_grants_bad_input_names_the_field(cli: Run) -> None:
    bad_input(cli("grants", "add", "user:erin", "-5"), "credits")
    bad_input(cli("grants", "add", "user:erin", "0"), "credits")
    bad_input(cli("grants", "add", "user:erin", "lots"), "credits")
    bad_input(cli("grants", "add", "user:erin", "0.0000000001"), "credits")
    bad_input(cli("grants", "add", "user:erin", "1", "--expires", "tomorrow"), "expires_at")
    bad_input(cli("grants", "add", "user:erin", "1", "--expires", "2030-01-01T00:00"), "expires_at")
    bad_input(
        cli("grants", "add", "user:erin", "1", "--expires", "2001-01-01T00:00:00Z"), "expires_at"
    )
    bad_input(cli("grants", "add", "erin", "1"), "subject")
    bad_input(cli("grants", "list", "erin"), "subject")
    assert as_json(cli("grants", "list", "user:erin", "--json"))["balance"] is None
