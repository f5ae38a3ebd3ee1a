"""Route modules; app.py includes every router listed in ``ROUTERS``."""
