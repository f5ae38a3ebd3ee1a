"""What every HTTP surface shares: the native API and the compatibility surfaces alike.

Authentication and roles (``auth``), the one door errors leave by and the
registry of surface error shapes (``errors``), the thread lanes (``capacity``)
and the app's Prometheus registry (``metrics``). It lives below both ``api`` and
``compat`` so neither imports the other: ``api.app`` includes the surfaces, the
surfaces need only this room, the engine and the domain. The layer contracts in
pyproject.toml (``lint-imports``) keep it that way; docs/architecture.md shows them.
"""
