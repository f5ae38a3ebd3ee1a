"""The memory backend: one state and one lock, seen as a catalog and a meter."""

from tokenquota.storage.memory.store import MemoryStore

__all__ = ["MemoryStore"]
