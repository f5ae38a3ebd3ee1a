"""The ``tokenquota`` command line: thin over the engine (see ``common``)."""

from tokenquota.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
