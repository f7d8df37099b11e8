"""system.record: a Record behaves as the typing.NamedTuple type checkers take it for."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any, NamedTuple

import pytest

from system.record import Record


class Typed(NamedTuple):
    name: str
    size: int
    label: str = ""
    flags: tuple[str, ...] = ()


class Ours(Record):
    name: str
    size: int
    label: str = ""
    flags: tuple[str, ...] = ()


class WithMethod(Record):
    base: int
    step: int = 1

    def next(self) -> WithMethod:
        return self._replace(base=self.base + self.step)

    def __str__(self) -> str:  # a class may still define its own text
        return f"{self.base}+{self.step}"


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("a", 1), {}),
    (("a", 1, "l", ("x",)), {}),
    (("a",), {"size": 2}),
    ((), {"size": 2, "name": "b", "flags": ("y",)}),
    (("a", 1), {"label": "z"}),
]
BAD_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    (("a",), {}),
    (("a", 1, "l", (), "extra"), {}),
    (("a", 1), {"name": "again"}),
    (("a", 1), {"colour": "red"}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_matches_named_tuple(args: tuple[Any, ...],
                                          kwargs: dict[str, Any]) -> None:
    theirs, ours = Typed(*args, **kwargs), Ours(*args, **kwargs)
    assert tuple(ours) == tuple(theirs)
    assert ours == theirs  # both are tuples: equal values are equal
    assert hash(ours) == hash(theirs)
    assert repr(ours) == repr(theirs).replace("Typed", "Ours")
    assert (ours.name, ours.size, ours.label, ours.flags) == tuple(theirs)
    assert ours._asdict() == theirs._asdict()
    assert isinstance(ours, tuple) and len(ours) == 4


@pytest.mark.parametrize(("args", "kwargs"), BAD_CALLS)
def test_bad_construction_is_refused_alike(args: tuple[Any, ...],
                                           kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        Typed(*args, **kwargs)
    with pytest.raises(TypeError):
        Ours(*args, **kwargs)


def test_class_attributes_match_named_tuple() -> None:
    assert Ours._fields == Typed._fields == ("name", "size", "label", "flags")
    assert Ours._field_defaults == Typed._field_defaults == {"label": "", "flags": ()}
    assert Ours.__match_args__ == Typed.__match_args__
    assert list(Ours.__annotations__) == list(Typed.__annotations__)


def test_fields_are_read_only_and_instances_have_no_dict() -> None:
    ours = Ours("a", 1)
    with pytest.raises(AttributeError):
        ours.name = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ours.other = 1  # type: ignore[attr-defined]
    assert not hasattr(ours, "__dict__")


def test_replace_make_and_unpacking() -> None:
    ours = Ours("a", 1)
    assert ours._replace(size=5) == Ours("a", 5)
    assert type(ours._replace(size=5)) is Ours
    with pytest.raises(ValueError):
        ours._replace(colour="red")
    assert Ours._make(["b", 2, "", ()]) == Ours("b", 2)
    with pytest.raises(TypeError):
        Ours._make(["b"])
    name, size, label, flags = ours
    assert (name, size, label, flags) == ("a", 1, "", ())
    assert ours[1] == 1 and ours[:2] == ("a", 1)


def test_pickle_copy_and_json() -> None:
    ours = Ours("a", 1, "l", ("x",))
    assert pickle.loads(pickle.dumps(ours)) == ours
    assert type(pickle.loads(pickle.dumps(ours))) is Ours
    assert copy.copy(ours) == ours and copy.deepcopy(ours) == ours
    assert json.dumps(ours) == json.dumps(Typed("a", 1, "l", ("x",)))


def test_methods_and_pattern_matching() -> None:
    step = WithMethod(1, 2)
    assert step.next() == WithMethod(3, 2) and str(step.next()) == "3+2"
    match step:
        case WithMethod(base, increment):
            assert (base, increment) == (1, 2)
        case _:
            pytest.fail("a Record matches by position, as a NamedTuple")


def test_definition_errors_match_named_tuple() -> None:
    with pytest.raises(TypeError):
        class DefaultFirst(Record):
            label: str = ""
            name: str
    with pytest.raises(ValueError):
        class Private(Record):
            _hidden: int
    with pytest.raises(TypeError):
        class Mixed(Record, dict):  # type: ignore[misc]
            name: str
    with pytest.raises(TypeError):
        class Derived(Ours):  # type: ignore[misc]
            extra: int
