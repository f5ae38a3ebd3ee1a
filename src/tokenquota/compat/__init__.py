"""Compatibility surfaces: other products' quota APIs, answered from the same engine.

One module per product (contract §8). Each only translates: its routes call
the engine and reshape the answer; its ``render_error`` gives errors under its
``PREFIXES`` that product's own shape. No second store, no second set of rules.
"""

from tokenquota.compat import bokamera, captaindata, datarobot, waldur

SURFACES = (waldur, bokamera, datarobot, captaindata)
