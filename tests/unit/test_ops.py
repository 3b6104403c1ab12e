"""The request operations: parsing of untrusted arrays, limits, conditions."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.errors import Code, ProtocolError
from store.osd.ops import (
    DETACH_DATA,
    MAX_KEYS_PER_OP,
    MAX_OMAP_LIST,
    MAX_OPS,
    MAX_READ_LENGTH,
    MAX_VALUE_SIZE,
    Cond,
    Create,
    Delete,
    GetXattrs,
    InvalidRequest,
    OmapClear,
    OmapGet,
    OmapList,
    OmapRm,
    OmapSet,
    Op,
    Read,
    RmXattr,
    SetXattr,
    Stat,
    Truncate,
    Write,
    WriteFull,
    Zero,
    attach_data_untrusted,
    detach_data,
    is_mutating,
    leaves_absent,
    ops_to_wire,
    parse_cond_untrusted,
    parse_omap_untrusted,
    parse_ops_untrusted,
    parse_xattrs_untrusted,
    validate_object_name,
)

EVERY_OP: list[tuple[list[object], Op]] = [
    (["read", 4096, 100], Read(4096, 100)),
    (["stat"], Stat()),
    (["getxattrs"], GetXattrs()),
    (["omap_get", ["a", "b"]], OmapGet(("a", "b"))),
    (["omap_list", None, 10, "p/"], OmapList(None, 10, "p/")),
    (["omap_list", "p/a", 0, ""], OmapList("p/a", 0, "")),
    (["create", True], Create(True)),
    (["write", 0, b"xyz"], Write(0, b"xyz")),
    (["write_full", b""], WriteFull(b"")),
    (["truncate", 7], Truncate(7)),
    (["zero", 1, 2], Zero(1, 2)),
    (["delete"], Delete()),
    (["setxattr", "k", b"v"], SetXattr("k", b"v")),
    (["rmxattr", "k"], RmXattr("k")),
    (["omap_set", {"k": b"v", "": b""}], OmapSet({"k": b"v", "": b""})),
    (["omap_rm", ["k"]], OmapRm(("k",))),
    (["omap_clear"], OmapClear()),
]


@pytest.mark.parametrize(("wire", "op"), EVERY_OP, ids=[str(w[0]) for w, _ in EVERY_OP])
def test_each_op_parses_and_encodes_back(wire: list[object], op: Op) -> None:
    decoded = msgpack.unpackb(msgpack.packb([wire]), raw=False)
    assert parse_ops_untrusted(decoded) == [op]
    assert ops_to_wire([op]) == [wire]


def test_is_mutating() -> None:
    reads = [op for _, op in EVERY_OP if isinstance(op, Read | Stat | GetXattrs | OmapGet)]
    assert not is_mutating([*reads, OmapList(None, 1, "")])
    assert is_mutating([Stat(), Truncate(0)])
    mutating = {type(op).__name__ for _, op in EVERY_OP if is_mutating([op])}
    assert mutating == {
        "Create",
        "Write",
        "WriteFull",
        "Truncate",
        "Zero",
        "Delete",
        "SetXattr",
        "RmXattr",
        "OmapSet",
        "OmapRm",
        "OmapClear",
    }


def test_leaves_absent() -> None:
    assert leaves_absent([Write(0, b"x"), Delete(), Stat()])
    assert not leaves_absent([Delete(), Create(False)])
    assert not leaves_absent([Stat()])


BAD_REQUESTS: list[tuple[object, str]] = [
    ({"read": 1}, "must be an array"),
    ([], "1 to"),
    ([["stat"]] * (MAX_OPS + 1), "1 to"),
    ([[]], "non-empty array"),
    (["stat"], "non-empty array"),
    ([["frobnicate"]], "unknown operation"),
    ([[7]], "unknown operation"),
    ([["stat", 1]], "takes 0 arguments"),
    ([["read", 0]], "takes 2 arguments"),
    ([["read", -1, 10]], "between 0 and"),
    ([["read", 0, MAX_READ_LENGTH + 1]], "between 0 and"),
    ([["read", True, 10]], "must be an integer"),
    ([["read", 0.0, 10]], "must be an integer"),
    ([["write", 2**63, b""]], "between 0 and"),
    ([["write", 0, "text"]], "must be bytes"),
    ([["create", 1]], "true or false"),
    ([["setxattr", "", b"v"]], "must not be empty"),
    ([["setxattr", "k" * 257, b"v"]], "longer than 256"),
    ([["setxattr", b"k", b"v"]], "must be text"),
    ([["setxattr", "k", "v"]], "must be bytes"),
    ([["omap_set", {"k" * 2049: b"v"}]], "longer than 2048"),
    ([["omap_set", [["k", b"v"]]]], "must be a map"),
    ([["omap_set", {1: b"v"}]], "must be text"),
    ([["omap_get", "k"]], "must be a list"),
    ([["omap_rm", ["k"] * (MAX_KEYS_PER_OP + 1)]], "more than"),
    ([["omap_list", None, MAX_OMAP_LIST + 1, ""]], "between 0 and"),
    ([["omap_list", 3, 10, ""]], "must be text"),
    ([["omap_list", None, 10, None]], "must be text"),
    ([["omap_get", ["\udc80"]]], "not valid UTF-8"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_REQUESTS)
def test_bad_requests_are_invalid(raw: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_ops_untrusted(raw)
    assert caught.value.code == Code.EINVAL
    assert isinstance(caught.value, ProtocolError)


def test_a_value_too_large_is_efbig() -> None:
    big = b"x" * (MAX_VALUE_SIZE + 1)
    for raw in (["setxattr", "k", big], ["omap_set", {"k": big}]):
        with pytest.raises(InvalidRequest, match="larger than") as caught:
            parse_ops_untrusted([raw])
        assert caught.value.code == Code.EFBIG
    assert parse_ops_untrusted([["setxattr", "k", big[:-1]]]) == [SetXattr("k", big[:-1])]


def test_object_names() -> None:
    assert validate_object_name("a") == "a"
    assert validate_object_name("é" * 512) == "é" * 512
    for bad in ("", "é" * 513, "x" * 1025, b"name", None, "\ud800"):
        with pytest.raises(InvalidRequest):
            validate_object_name(bad)


def test_whole_maps_of_xattrs_and_omap() -> None:
    many = {f"k{i}": b"" for i in range(MAX_KEYS_PER_OP + 1)}
    assert parse_omap_untrusted(many, limit=None) == many
    with pytest.raises(InvalidRequest):
        parse_omap_untrusted(many)
    assert parse_xattrs_untrusted({"a": b"1"}) == {"a": b"1"}
    for bad in ({"": b"1"}, {"a": 1}, [("a", b"1")]):
        with pytest.raises(InvalidRequest):
            parse_xattrs_untrusted(bad)


def test_conditions() -> None:
    assert parse_cond_untrusted(None) is None
    assert parse_cond_untrusted({}) is None
    assert parse_cond_untrusted({"exists": False}) == Cond(exists=False)
    assert parse_cond_untrusted({"version": [3, 9]}) == Cond(version=(3, 9))
    both = parse_cond_untrusted({"exists": True, "version": (1, 2)})
    assert both == Cond(True, (1, 2))
    assert parse_cond_untrusted(both.to_wire()) == both
    bad: object
    for bad in (
        [],
        {"exists": 1},
        {"version": [1]},
        {"version": [1, -2]},
        {"version": "1.2"},
        {"exist": True},
        {1: True},
    ):
        with pytest.raises(InvalidRequest):
            parse_cond_untrusted(bad)


def test_condition_evaluation() -> None:
    assert Cond().holds(False, (0, 0))
    assert Cond(exists=True).holds(True, (2, 5))
    assert not Cond(exists=True).holds(False, (0, 0))
    assert Cond(exists=False).holds(False, (0, 0))
    assert not Cond(exists=False).holds(True, (2, 5))
    assert Cond(version=(2, 5)).holds(True, (2, 5))
    assert not Cond(version=(2, 5)).holds(True, (2, 6))
    assert Cond(version=(0, 0)).holds(False, (0, 0))
    assert not Cond(exists=True, version=(0, 0)).holds(False, (0, 0))


# --- properties -----------------------------------------------------------------------

keys = st.text(max_size=8)
values = st.binary(max_size=16)
offsets = st.integers(0, 2**40)
ops = st.one_of(
    st.builds(Read, offsets, st.integers(0, MAX_READ_LENGTH)),
    st.just(Stat()),
    st.just(GetXattrs()),
    st.builds(OmapGet, st.lists(keys, max_size=4).map(tuple)),
    st.builds(OmapList, st.none() | keys, st.integers(0, MAX_OMAP_LIST), keys),
    st.builds(Create, st.booleans()),
    st.builds(Write, offsets, values),
    st.builds(WriteFull, values),
    st.builds(Truncate, offsets),
    st.builds(Zero, offsets, offsets),
    st.just(Delete()),
    st.builds(SetXattr, keys.filter(bool), values),
    st.builds(RmXattr, keys.filter(bool)),
    st.builds(OmapSet, st.dictionaries(keys, values, max_size=4)),
    st.builds(OmapRm, st.lists(keys, max_size=4).map(tuple)),
    st.just(OmapClear()),
)


@given(st.lists(ops, min_size=1, max_size=MAX_OPS))
def test_ops_survive_the_wire(request_ops: list[Op]) -> None:
    wire = msgpack.packb(ops_to_wire(request_ops), use_bin_type=True)
    assert parse_ops_untrusted(msgpack.unpackb(wire, raw=False)) == request_ops


msgpackable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=5)
    ),
    max_leaves=20,
)
op_names = st.sampled_from([wire[0] for wire, _ in EVERY_OP])
op_shaped = st.builds(lambda name, args: [name, *args], op_names, st.lists(msgpackable, max_size=4))


@settings(max_examples=300)
@given(msgpackable | st.lists(op_shaped | msgpackable, max_size=4))
def test_parse_ops_raises_only_invalid_request(raw: object) -> None:
    try:
        parsed = parse_ops_untrusted(raw)
    except InvalidRequest as exc:
        assert exc.message
        return
    assert parse_ops_untrusted(ops_to_wire(parsed)) == parsed


@given(msgpackable)
def test_parse_cond_raises_only_invalid_request(raw: object) -> None:
    try:
        cond = parse_cond_untrusted(raw)
    except InvalidRequest:
        return
    assert cond is None or parse_cond_untrusted(cond.to_wire()) == cond


def test_large_write_data_travels_detached_and_comes_back_as_views() -> None:
    big, other = b"a" * DETACH_DATA, b"b" * (DETACH_DATA + 5)
    raw = [["write", 10, big], ["setxattr", "k", b"v"], ["write_full", other], ["write", 0, b"s"]]
    wire, tail = detach_data(raw)
    assert wire == [["write", 10, len(big)], raw[1], ["write_full", len(other)], raw[3]]
    assert tail[0] is big and tail[1] is other  # not copied
    assert raw[0][2] is big  # the caller's operations are left as they were
    back = attach_data_untrusted(wire, memoryview(b"".join(tail)))
    ops = parse_ops_untrusted(back)
    assert ops == [Write(10, big), SetXattr("k", b"v"), WriteFull(other), Write(0, b"s")]
    assert isinstance(ops[0], Write) and isinstance(ops[0].data, memoryview)


@pytest.mark.parametrize(
    ("wire", "tail"),
    [
        ([["write", 0, 5]], b"1234"),  # a length past the tail's end
        ([["write", 0, 2]], b"1234"),  # tail bytes no write takes
        ([["write_full", -1]], b""),  # a negative length
        ("write", b""),  # not a list of operations
    ],
)
def test_detached_data_that_does_not_add_up_is_refused(wire: object, tail: bytes) -> None:
    with pytest.raises(InvalidRequest):
        attach_data_untrusted(wire, memoryview(tail))


def test_a_length_where_data_belongs_is_refused_without_a_tail() -> None:
    with pytest.raises(InvalidRequest):
        parse_ops_untrusted([["write", 0, 4096]])
