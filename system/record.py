"""Record: an immutable tuple with named fields, the agent's typing.NamedTuple.

typing.NamedTuple makes each class through collections.namedtuple, which compiles the
constructor with `eval` and checks every annotation: ~0.15 ms a class, and a boot
imports ~25 of them, ~4 ms of every boot. A Record class is made in ~0.01 ms by the
small metaclass below. Type checkers see typing.NamedTuple itself (the TYPE_CHECKING
branch), so a Record must behave as one: tests/unit/test_record.py holds the two side
by side (construction, defaults, errors, equality, unpacking, _replace, _asdict,
pickling).

    class Partition(Record):
        number: int
        start: int
        label: str = ""
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any

__all__ = ["Record"]

if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:

    class _RecordMeta(type):
        """Turns the annotated class attributes of a direct Record subclass into fields."""

        def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]):
            if bases and bases != (Record,):
                raise TypeError(f"{name}: a Record class takes no other base class and is "
                                "not subclassed (as typing.NamedTuple)")
            if not bases:  # Record itself
                return super().__new__(mcls, name, (tuple,), namespace)
            fields = tuple(namespace.get("__annotations__", {}))
            defaults: dict[str, Any] = {}
            for index, field in enumerate(fields):
                if field.startswith("_"):
                    raise ValueError(f"{name}: field names cannot start with an underscore: "
                                     f"{field!r}")
                if field in namespace:
                    defaults[field] = namespace[field]
                elif defaults:
                    raise TypeError(f"{name}: non-default field {field} cannot follow default "
                                    f"field(s) {', '.join(defaults)}")
                namespace[field] = property(itemgetter(index), doc=f"Field number {index}")
            namespace.update(__slots__=(), _fields=fields, _field_defaults=defaults,
                             __match_args__=fields)
            return super().__new__(mcls, name, bases, namespace)

    class Record(metaclass=_RecordMeta):
        __slots__ = ()
        _fields: tuple[str, ...] = ()
        _field_defaults: dict[str, Any] = {}

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            fields = cls._fields
            if len(args) == len(fields) and not kwargs:
                return tuple.__new__(cls, args)
            if len(args) > len(fields):
                raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments but "
                                f"{len(args)} were given")
            values = list(args)
            for field in fields[len(args):]:
                if field in kwargs:
                    values.append(kwargs.pop(field))
                elif field in cls._field_defaults:
                    values.append(cls._field_defaults[field])
                else:
                    raise TypeError(f"{cls.__name__}() missing required argument: {field!r}")
            for extra in kwargs:
                if extra in fields:
                    raise TypeError(f"{cls.__name__}() got multiple values for argument "
                                    f"{extra!r}")
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument "
                                f"{extra!r}")
            return tuple.__new__(cls, values)

        @classmethod
        def _make(cls, iterable: Any) -> Any:
            values = tuple(iterable)
            if len(values) != len(cls._fields):
                raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(values)}")
            return tuple.__new__(cls, values)

        def _replace(self, **changes: Any) -> Any:
            values = [changes.pop(field, value)
                      for field, value in zip(self._fields, self, strict=True)]
            if changes:
                raise ValueError(f"Got unexpected field names: {list(changes)!r}")
            return tuple.__new__(type(self), values)

        def _asdict(self) -> dict[str, Any]:
            return dict(zip(self._fields, self, strict=True))

        def __repr__(self) -> str:
            shown = ", ".join(f"{field}={value!r}"
                              for field, value in zip(self._fields, self, strict=True))
            return f"{type(self).__name__}({shown})"

        def __getnewargs__(self) -> tuple[Any, ...]:
            return tuple(self)
