"""Building frozen value objects on the hot path.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__``, since its own ``__setattr__`` refuses: about 70 ns a
field, against a few for a plain slot store. For the twelve fields of a
``LimitStatus`` that is three quarters of what building one costs, and every
decision builds one per limit, plus its ``Decision``, its readings and its
event (docs/performance-log.md, part 5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, field, fields, is_dataclass, make_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def builder(cls: type[T], *, defer: tuple[str, str] | None = None) -> Callable[..., T]:
    """A constructor for the frozen slots dataclass ``cls`` that stores its fields directly.

    It builds an instance of a twin that is not frozen (the same fields in the
    same order, with the same defaults, hence the same slots) and relabels it
    ``cls``, which Python allows between classes of one layout. What comes out
    is an ordinary ``cls``: frozen, equal, hashed, printed and pickled as any
    other. It takes the same arguments as ``cls``. ``__post_init__`` would not
    run, so a class that has one is refused, as is one that is not a frozen
    slots dataclass.

    ``defer=(name, pending)`` builds instances whose field ``name`` is left
    unset and whose field ``pending`` (an ``init=False`` field of ``cls``) is
    an argument instead: for a class that builds ``name`` from ``pending`` on
    first read (``Decision.limits``).
    """
    if not is_dataclass(cls) or cls.__setattr__ is object.__setattr__:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    if "__slots__" not in vars(cls) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} must have slots and no __post_init__")

    def relabel(self: Any) -> None:
        self.__class__ = cls

    # The twin's own __init__ relabels what it built (as __post_init__): the
    # builder is the twin class itself, so keyword arguments reach the generated
    # __init__ directly instead of through a *args/**kwargs wrapper, which made
    # a keyword call cost nearly twice a positional one.
    unset, pending = defer or ("", "")

    def init(f: Field[Any]) -> bool:
        return f.name == pending or (f.init and f.name != unset)

    twin: Any = make_dataclass(
        f"{cls.__name__}{'Deferred' if defer else 'Draft'}",
        [
            (
                f.name,
                f.type,
                field(default=f.default, default_factory=f.default_factory, init=init(f))
                if f.name != unset
                else field(init=False),
            )
            for f in fields(cls)
        ],
        slots=True,
        eq=False,
        match_args=False,
        namespace={"__post_init__": relabel},
    )
    if twin.__slots__ != vars(cls)["__slots__"]:
        raise TypeError(f"{cls.__name__}: the twin's slots differ")
    twin.__doc__ = f"{cls.__name__}(...), built without its frozen __init__ (frozen.builder)."
    return twin  # type: ignore[no-any-return]
