"""compose.yaml, read as data: no registry answers here to pull postgres and redis,
so the file cannot be run by the tests; what can be checked without running it is
that every service is healthy before what depends on it starts, that the replicas
are the same image with the same settings, and that Redis keeps what it
acknowledged. Cheap, so it runs in `make test`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed; read as plain data

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
REPLICAS = ("tokenquota-1", "tokenquota-2")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    found: dict[str, Any] = document["services"]
    return found


def test_every_dependency_is_waited_for(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in REPLICAS:
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }


def test_the_replicas_are_one_image_on_shared_stores(services: dict[str, Any]) -> None:
    first, second = (services[name] for name in REPLICAS)
    assert first["build"] == second["build"] == services["migrate"]["build"] == "."
    assert first["environment"] == second["environment"] == services["migrate"]["environment"]
    assert first["environment"]["TOKENQUOTA_DB"].startswith("postgresql://")
    assert first["environment"]["TOKENQUOTA_REDIS"].startswith("redis://redis:")
    ports = [port for name in REPLICAS for port in services[name]["ports"]]
    assert len(set(ports)) == 2
    # The image's own HEALTHCHECK applies to the replicas; migrate exits, so it has none.
    assert "healthcheck" not in first
    assert "healthcheck" not in second
    assert services["migrate"]["healthcheck"] == {"disable": True}
    assert services["migrate"]["command"] == ["migrate"]


def test_redis_never_forgets_or_evicts(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    settings = dict(zip(command[1::2], command[2::2], strict=True))
    assert settings == {
        "--appendonly": "yes",
        "--appendfsync": "always",
        "--maxmemory-policy": "noeviction",
    }
