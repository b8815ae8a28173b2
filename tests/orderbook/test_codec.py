"""Binary command codec: round trips, exact layout length, clear errors on malformed bytes."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from orderbook import AddOrder, CancelOrder, ReplaceOrder, Side, decode_command, encode_command
from orderbook.codec import encode_add

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
TEXT = st.text(max_size=20).filter(lambda t: len(t.encode("utf-8", "surrogatepass")) <= 255
                                   and not any(0xD800 <= ord(c) <= 0xDFFF for c in t))
commands = st.one_of(
    st.builds(AddOrder, TEXT, TEXT, st.sampled_from(list(Side)), INT64, INT64, INT64,
              st.booleans(), st.booleans()),
    st.builds(CancelOrder, TEXT, st.one_of(st.none(), TEXT)),
    st.builds(ReplaceOrder, TEXT, INT64, INT64, st.one_of(st.none(), TEXT)),
)


@seed(7)
@settings(max_examples=300, derandomize=True)
@given(commands)
def test_round_trip(cmd: AddOrder | CancelOrder | ReplaceOrder) -> None:
    data = encode_command(cmd)
    assert decode_command(data) == cmd
    assert decode_command(memoryview(data)) == cmd


def test_a_decoded_add_is_the_frozen_value_its_constructor_builds() -> None:
    """codec Rule 4 builds adds through their slots: same value, hash, repr, still frozen."""
    made = AddOrder("7.42", "AAPL", Side.SELL, 10_050, 300, 10_000, True, False)
    decoded = decode_command(encode_command(made))
    assert type(decoded) is AddOrder
    assert decoded == made and hash(decoded) == hash(made) and repr(decoded) == repr(made)
    assert [type(getattr(decoded, f)) for f in AddOrder.__dataclass_fields__] == \
        [str, str, Side, int, int, int, bool, bool]
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.qty = 1  # type: ignore[misc]


def test_layout_is_compact() -> None:
    assert len(encode_command(AddOrder("o1", "AAPL", Side.BUY, 10000, 100))) == 29 + 2 + 4
    assert len(encode_command(CancelOrder("o1"))) == 5 + 2
    assert len(encode_command(ReplaceOrder("o1", -5, 0, "AAPL"))) == 21 + 2 + 4


@pytest.mark.parametrize(("cmd", "message"), [
    (AddOrder("x" * 256, "S", Side.BUY, 1, 1), "order id: 256 bytes"),
    (AddOrder("o", "S", Side.BUY, 1 << 63, 1), "cannot encode AddOrder"),
    (AddOrder(5, "S", Side.BUY, 1, 1), "expected str"),  # type: ignore[arg-type]
    (AddOrder("\ud800", "S", Side.BUY, 1, 1), "not valid UTF-8"),
    (AddOrder("o", "S", 7, 1, 1), "cannot encode side"),  # type: ignore[arg-type]
    ("cancel", "cannot encode str: not a command"),
])
def test_encode_errors(cmd: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_command(cmd)  # type: ignore[arg-type]


GOOD_ADD = encode_command(AddOrder("o1", "AAPL", Side.SELL, 5, 6, 7, True, False))
GOOD_CANCEL = encode_command(CancelOrder("o1", "AAPL"))
GOOD_REPLACE = encode_command(ReplaceOrder("o1", -1, 2))


@pytest.mark.parametrize(("data", "message"), [
    (b"", "shorter than a header"),
    (b"\x01\x01", "shorter than a header"),
    (b"\x02" + GOOD_ADD[1:], "codec version 2"),
    (GOOD_ADD[:1] + b"\x09" + GOOD_ADD[2:], "unknown kind 9"),
    (GOOD_ADD[:2] + b"\x40" + GOOD_ADD[3:], "unknown add flags"),
    (GOOD_ADD[:20], "add shorter than its header"),
    (GOOD_ADD + b"x", "header says"),
    (GOOD_ADD[:-1], "header says"),
    (GOOD_ADD[:-4] + b"\xff\xfe\xfd\xfc", "not UTF-8"),
    (GOOD_CANCEL[:2] + b"\x01" + GOOD_CANCEL[3:], "unknown flags"),
    (GOOD_CANCEL[:2] + b"\x00" + GOOD_CANCEL[3:], "without the has-symbol flag"),
    (GOOD_REPLACE[:10], "replace shorter than its header"),
])
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_command(data)


@seed(11)
@settings(max_examples=400, derandomize=True)
@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_value_error(data: bytes) -> None:
    try:
        decode_command(data)
    except ValueError:
        pass


def test_header_struct_sizes() -> None:
    assert struct.calcsize("<BBBBBqqq") == 29


@seed(11)
@settings(max_examples=300, derandomize=True)
@given(TEXT, TEXT, st.booleans(), INT64, INT64, INT64, st.booleans(), st.booleans())
def test_encode_add_is_the_encoding_of_the_add_it_describes(
        order_id: str, symbol: str, sell: bool, price: int, qty: int, stop: int, aon: bool,
        ioc: bool) -> None:
    """codec Rule 5: one layout, whether or not an ``AddOrder`` was built."""
    add = AddOrder(order_id, symbol, Side.SELL if sell else Side.BUY, price, qty, stop, aon, ioc)
    assert encode_add(order_id, symbol, sell, price, qty, stop, aon, ioc) == encode_command(add)


@pytest.mark.parametrize(("fields", "message"), [
    (("x" * 256, "S", False, 1, 1, 0, False, False), "order id: 256 bytes"),
    (("o", "S" * 256, False, 1, 1, 0, False, False), "symbol: 256 bytes"),
    (("o", "S", True, 1 << 63, 1, 0, False, False), "cannot encode AddOrder"),
    (("\ud800", "S", False, 1, 1, 0, False, False), "not valid UTF-8"),
])
def test_encode_add_refuses_what_encode_command_refuses(fields: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_add(*fields)
    order_id, symbol, sell, *rest = fields
    with pytest.raises(ValueError, match=message):
        encode_command(AddOrder(order_id, symbol, Side.SELL if sell else Side.BUY, *rest))
