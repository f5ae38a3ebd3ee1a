"""The dashboard at /dashboard: server-rendered pages over the same engine and rules as /v1."""
