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
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def builder(cls: type[T], *, defer: tuple[str, str] | None = None) -> Callable[..., T]:
    """A constructor for the frozen slots dataclass ``cls`` that stores its fields directly.

    It builds an instance of a twin that is not frozen (the same slots in the
    same order) and relabels it ``cls``, which Python allows between classes
    of one layout. What comes out is an ordinary ``cls``: frozen, equal,
    hashed, printed and pickled as any other. It takes the same arguments as
    ``cls``, with the same defaults and default factories. ``__post_init__``
    would not run, so a class that has one is refused, as is one that is not
    a frozen slots dataclass, or has keyword-only fields.

    ``defer=(name, pending)`` builds instances whose field ``name`` is left
    unset and whose field ``pending`` is an argument even if ``cls`` does not
    take it (an ``init=False`` field): for a class that builds ``name`` from
    ``pending`` on first read (``Decision.limits``, ``DebitPlan.checks``).
    """
    if not is_dataclass(cls) or cls.__setattr__ is object.__setattr__:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    # Its slots are its fields (a subclass of such a class may add none: ``PlacedPlan``).
    slots = tuple(f.name for f in fields(cls))
    declared = tuple(name for k in reversed(cls.__mro__) for name in vars(k).get("__slots__", ()))
    if declared != slots or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} must have slots and no __post_init__")
    unset, pending = defer or ("", "")
    # The twin's __init__ is written here rather than by ``make_dataclass``: one frame
    # that stores every slot and relabels the instance, where a dataclass's would
    # call a ``__post_init__`` to relabel it (a second frame per object built).
    names: dict[str, Any] = {"_cls": cls, "_missing": MISSING}
    params: list[str] = []
    body: list[str] = []
    for f in fields(cls):
        name = f.name
        if f.kw_only:
            raise TypeError(f"{cls.__name__}.{name} is keyword-only")
        if name == unset:
            continue
        if f.default is not MISSING:
            names[f"_default_{name}"] = f.default
        if f.default_factory is not MISSING:
            names[f"_factory_{name}"] = f.default_factory
        if f.init or name == pending:
            if f.default is not MISSING:
                params.append(f"{name}=_default_{name}")
                body.append(f"self.{name} = {name}")
            elif f.default_factory is not MISSING:
                params.append(f"{name}=_missing")
                body.append(f"self.{name} = _factory_{name}() if {name} is _missing else {name}")
            else:
                params.append(name)
                body.append(f"self.{name} = {name}")
        elif f.default is not MISSING:
            body.append(f"self.{name} = _default_{name}")
        elif f.default_factory is not MISSING:
            body.append(f"self.{name} = _factory_{name}()")
    body.append("self.__class__ = _cls")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body)
    exec(source, names)  # our own text, from the class's field names
    twin: Any = type(
        f"{cls.__name__}{'Deferred' if defer else 'Draft'}",
        (),
        {
            "__slots__": slots,
            "__init__": names["__init__"],
            "__doc__": f"{cls.__name__}(...), built without its frozen __init__ (frozen.builder).",
        },
    )
    return twin  # type: ignore[no-any-return]


def built_on_read(
    base: type[T],
    name: str,
    build: Callable[[Any], Any],
    *,
    clear: str | None = None,
    doc: str,
) -> type[T]:
    """A subclass of the frozen slots dataclass ``base`` whose field ``name`` is built
    by ``build(instance)`` when first read (``Decision.limits``, ``DebitPlan.checks``).

    Most callers on the hot path never read that field, so building it up front is
    waste. The first read stores it in its slot (then sets the field ``clear``, if
    given, to None: the slot is set first, so a reader that finds ``clear`` gone
    finds the field) and relabels the instance ``base``: from then on it is an
    ordinary ``base``, and every reader (``==``, ``repr``, ``replace``, pickling,
    orjson) sees one. Only ``name`` is a property, so reading any other field costs
    what it costs on ``base``: a class with ``__getattr__`` makes every field's read
    several times dearer. Two threads reading at once both build, from the same
    frozen fields, equal values. Build instances with ``builder(cls, defer=...)``.
    """
    slot: Any = base.__dict__[name]  # the slot itself (a member descriptor)
    cleared: Any = base.__dict__[clear] if clear else None

    def read(self: Any) -> Any:
        try:
            value = slot.__get__(self, base)
        except AttributeError:
            value = build(self)
            slot.__set__(self, value)
            if cleared is not None:
                cleared.__set__(self, None)
        object.__setattr__(self, "__class__", base)
        return value

    def write(self: Any, value: Any) -> None:
        slot.__set__(self, value)  # how pickling and copying restore the field

    def eq(self: Any, other: object) -> bool:
        read(self)
        if isinstance(other, cls):  # else its reflected __eq__ would come first
            read(other)
        return bool(self == other)

    def rep(self: Any) -> str:
        read(self)
        return repr(self)

    def reduce(self: Any, protocol: Any) -> Any:
        read(self)  # pickled and copied as the ``base`` it then is
        return self.__reduce_ex__(protocol)

    cls: type[T] = type(
        f"{base.__name__}Built{name.title()}OnRead",
        (base,),
        {
            "__slots__": (),
            "__doc__": doc,
            "__module__": base.__module__,
            # orjson takes a dataclass by its class's own ``__dataclass_fields__``.
            "__dataclass_fields__": base.__dataclass_fields__,  # type: ignore[attr-defined]
            name: property(read, write),
            "__eq__": eq,
            "__hash__": base.__hash__,
            "__repr__": rep,
            "__reduce_ex__": reduce,
        },
    )
    return cls
