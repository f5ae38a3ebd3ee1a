"""The HTTP rooms load in layer order: no api/compat circle, no app built on import.

`lint-imports` (make lint) checks the import graph statically; these check what
a fresh interpreter actually loads, which is what a circle breaks at run time.
Each runs in its own process so nothing already imported by the test session
hides an import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_fresh(code: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_compat_loads_without_the_native_api() -> None:
    # The surfaces share auth, errors and lanes with the API through tokenquota.http.
    run_fresh(
        """
        import sys
        import tokenquota.compat
        loaded = sorted(m for m in sys.modules if m.startswith("tokenquota.api"))
        assert not loaded, loaded
        assert "tokenquota.http.auth" in sys.modules
        """
    )


def test_importing_a_route_does_not_build_the_app() -> None:
    run_fresh(
        """
        import sys
        import tokenquota.api.routes.metering
        assert "tokenquota.api.app" not in sys.modules
        assert "tokenquota.compat" not in sys.modules
        """
    )


def test_the_package_still_offers_the_app_on_first_use() -> None:
    # The documented entry points keep working: `from tokenquota.api import create_app`
    # and the factory path uvicorn's workers import (cli/serve.py APP_FACTORY).
    run_fresh(
        """
        import sys
        import uvicorn.importer
        from tokenquota.api import create_app
        import tokenquota.api.app as app
        from tokenquota.cli.serve import APP_FACTORY
        assert create_app is app.create_app
        assert uvicorn.importer.import_from_string(APP_FACTORY) is app.app_from_env
        try:
            import tokenquota.api as api
            api.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("an unknown name must raise AttributeError")
        """
    )


def test_the_app_includes_every_surface() -> None:
    # create_app imports the surfaces at module level now; each still answers in its shape.
    run_fresh(
        """
        from tokenquota import gateway
        from tokenquota.api.app import create_app
        from tokenquota.compat import SURFACES
        from tokenquota.settings import Settings
        app = create_app(Settings(db="memory://"))
        paths = set(app.openapi()["paths"])
        for surface in SURFACES:
            for prefix in surface.PREFIXES:
                stem = prefix.rstrip("/")
                assert any(p == stem or p.startswith(stem + "/") for p in paths), prefix
        claimed = [prefix for prefix, _ in app.state.error_surfaces]
        assert claimed == [p for s in SURFACES for p in s.PREFIXES] + [gateway.PREFIX]
        """
    )
