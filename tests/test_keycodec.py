"""The key and value codec: the Cython `_core` and the pure-Python `keycodec` agree.

Differential tests (hypothesis) check the two implementations byte for byte and error
for error; the ORDER property checks encoded order against a model of IRIS collation
written independently here (Fraction and Decimal arithmetic, not the codec's digits);
named cases pin every rule and limit of the spec.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from irisrep import _core, keycodec
from irisrep.constants import (
    GLOBAL_NAME_CHARS_MAX,
    REFERENCE_BYTES_MAX,
    STRING_CHARS_MAX,
    SUBSCRIPT_LEVELS_MAX,
)
from irisrep.errors import CorruptError, IllegalValueError, MaxStringError, SubscriptError

IMPLS = [pytest.param(keycodec, id="python"), pytest.param(_core, id="cython")]
PREFIX = b"g\x00"


@pytest.fixture(params=IMPLS, scope="module")
def kc(request):
    return request.param


def outcome(fn, *args):
    """The result, or (error class, message): both must agree between the two codecs."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the class is what is compared
        return ("error", type(exc), str(exc))


def typed(values):
    # 1 == 1.0 == True in Python: compare types too.
    return [(type(v), v) for v in values]


# --- strategies -------------------------------------------------------------------------

TRICKY_STRINGS = [
    "1",
    "01",
    "1.0",
    "-0",
    "0",
    "1e3",
    "+1",
    " 1",
    "1.",
    "0.5",
    ".5",
    "-.5",
    ".",
    "-",
    "-.",
    "10.25",
    "1.50",
    "100",
    "-100",
    ".05",
    "-0.5",
    "00",
    "1 ",
    "\ud800",
    "a\udfffb",
    "",
    "\x00",
    "a\x00",
    "123456789012345678",
    "1234567890123456789",
    ".123456789012345678",
    ".1234567890123456789",
    "1" + "0" * 126,
    "1" + "0" * 127,
    "." + "0" * 127 + "1",
    "." + "0" * 128 + "1",
    "100000000000000000000",
    "\U0001f600",
    "\uffff",
    "é",
    "Z",
    "~",
]

numeric_strings = st.from_regex(r"-?[0-9]{0,21}(\.[0-9]{0,21})?", fullmatch=True)
subscripts = st.one_of(
    st.integers(min_value=-(10**19), max_value=10**19),
    st.integers(),
    st.integers(min_value=-9, max_value=9).map(lambda d: d * 10**120),
    st.floats(),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda f: round(f, 3)),
    numeric_strings,
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0x10000), max_size=4),
    st.binary(max_size=8),
    st.sampled_from(TRICKY_STRINGS),
    st.sampled_from([True, None, 1j, [1], b"\xff", -0.0, 0.1, 1e16, 2.0**60, 1e-130]),
)
subscript_tuples = st.lists(subscripts, max_size=6).map(tuple)
# For the ORDER property: mostly valid subscripts, so that few examples are thrown away.
valid_subscripts = st.one_of(
    st.integers(min_value=-(10**18) + 1, max_value=10**18 - 1),
    st.integers(min_value=-9, max_value=9).map(lambda d: d * 10**120),
    st.floats(min_value=-1e30, max_value=1e30, allow_nan=False),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda f: round(f, 3)),
    numeric_strings,
    st.text(alphabet=st.characters(blacklist_characters="\x00"), min_size=1, max_size=6),
    st.sampled_from([t for t in TRICKY_STRINGS if t and "\x00" not in t and "\ud800" not in t]),
)
valid_tuples = st.lists(valid_subscripts, max_size=4).map(tuple)
# Half the pairs share a leading part, so that later levels and prefixes decide.
tuple_pairs = st.one_of(
    st.tuples(valid_tuples, valid_tuples),
    valid_tuples.flatmap(
        lambda a: st.tuples(
            st.just(a),
            st.integers(min_value=0, max_value=len(a)).flatmap(
                lambda k: valid_tuples.map(lambda tail: a[:k] + tail)
            ),
        )
    ),
)


# --- differential -----------------------------------------------------------------------


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subscript_tuples)
@example(("1", 1, "01", 0.5, ".5", -0.0))
def test_encode_key_cython_equals_python(subs):
    py = outcome(keycodec.encode_key, PREFIX, subs)
    cy = outcome(_core.encode_key, PREFIX, subs)
    assert py == cy
    if py[0] != "ok":
        return
    key = py[1]
    decoded_py = keycodec.decode_subscripts(key, len(PREFIX))
    decoded_cy = _core.decode_subscripts(key, len(PREFIX))
    assert typed(decoded_py) == typed(decoded_cy)
    assert _core.encode_key(PREFIX, decoded_cy) == key  # the round trip $ORDER relies on
    assert keycodec.decode_key(key) == ("g", decoded_py)
    assert typed(_core.decode_key(key)[1]) == typed(decoded_py)


@settings(max_examples=800, deadline=None)
@given(subscripts)
def test_canonical_string_and_value_codec_agree(sub):
    for name in ("canonical_string", "encode_value", "number_value"):
        py = outcome(getattr(keycodec, name), sub)
        cy = outcome(getattr(_core, name), sub)
        assert repr(py) == repr(cy), name
    encoded = outcome(keycodec.encode_value, sub)
    if encoded[0] == "ok":
        value = _core.decode_value(encoded[1])
        assert repr(value) == repr(keycodec.decode_value(encoded[1]))
        assert _core.encode_value(value) == encoded[1]


@settings(max_examples=300, deadline=None)
@given(subscript_tuples)
def test_format_reference_agrees(subs):
    assert outcome(keycodec.format_reference, "^acct", subs) == outcome(
        _core.format_reference, "^acct", subs
    )


def _mutations(key: bytes, data) -> bytes:
    """A valid key, damaged: a byte changed, inserted or dropped, or cut short."""
    position = data.draw(st.integers(min_value=0, max_value=max(len(key) - 1, 0)))
    byte = data.draw(
        st.sampled_from(
            [
                0x00,
                0x01,
                0x0F,
                0x20,
                0x21,
                0x22,
                0x30,
                0x7F,
                0x80,
                0xB0,
                0xEF,
                0xFF,
                0x10,
                0x11,
                0xAA,
            ]
        )
    )
    how = data.draw(st.sampled_from(["set", "insert", "drop", "cut"]))
    if how == "set":
        return key[:position] + bytes((byte,)) + key[position + 1 :]
    if how == "insert":
        return key[:position] + bytes((byte,)) + key[position:]
    if how == "drop":
        return key[:position] + key[position + 1 :]
    return key[:position]


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_decoders_agree_on_any_bytes_and_accept_only_canonical(data):
    """Decoding random or damaged keys: same answer or same error; accepted => canonical."""
    subs = data.draw(subscript_tuples)
    try:
        key = keycodec.encode_key(b"", subs)
    except SubscriptError:
        key = data.draw(st.binary(max_size=24))
    if data.draw(st.booleans()):
        key = _mutations(key, data)
    py = outcome(keycodec.decode_subscripts, key, 0)
    cy = outcome(_core.decode_subscripts, key, 0)
    assert repr(py) == repr(cy)
    if py[0] == "ok":
        assert keycodec.encode_key(b"", py[1]) == key
    else:
        assert py[1] is SubscriptError and "malformed" in py[2]


@settings(max_examples=800, deadline=None)
@given(st.data())
def test_value_decoders_agree_on_any_bytes(data):
    payload = data.draw(
        st.one_of(
            st.binary(max_size=12),
            numeric_strings.map(str.encode),
            st.sampled_from(
                [
                    b"1.5",
                    b"2.0",
                    b"1e+18",
                    b"nan",
                    b"inf",
                    b"-0",
                    b"007",
                    b"1e16",
                    b"1_0",
                    b" 1",
                    b"0.1",
                    b"-",
                    b"",
                ]
            ),
        )
    )
    tag = data.draw(st.sampled_from([b"", b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"]))
    blob = tag + payload
    py = outcome(keycodec.decode_value, blob)
    cy = outcome(_core.decode_value, blob)
    assert repr(py) == repr(cy)
    if py[0] == "ok":
        assert keycodec.encode_value(py[1]) == blob
    else:
        assert py[1] is CorruptError


# --- ORDER: an independent model of IRIS collation --------------------------------------

_MODEL_NUMBER_CHARS = re.compile(r"-?[0-9]*\.?[0-9]*")


def _model_canonical_text(value: Decimal) -> str:
    """IRIS canonical form computed with Decimal formatting (not the codec's digits)."""
    if value == value.to_integral_value():
        return str(int(value))
    text = format(value, "f").rstrip("0")
    negative = text.startswith("-")
    text = text.lstrip("-")
    if text.startswith("0."):
        text = text[1:]
    return ("-" if negative else "") + text


def _model_in_range(value: Decimal) -> bool:
    if value == 0:
        return True
    digits = value.normalize().as_tuple().digits
    return len(digits) <= 18 and -128 <= value.adjusted() + 1 <= 127


def model(sub) -> tuple:
    """Sort key of one subscript: (0, Fraction) for numbers, (1, str) for strings."""
    if isinstance(sub, bytes):
        sub = sub.decode("utf-8")
    if isinstance(sub, str):
        if _MODEL_NUMBER_CHARS.fullmatch(sub):
            try:
                value = Decimal(sub)
            except InvalidOperation:
                return (1, sub)
            if _model_canonical_text(value) == sub and _model_in_range(value):
                return (0, Fraction(value))
        return (1, sub)
    if isinstance(sub, float):
        return (0, Fraction(Decimal(repr(sub))))
    return (0, Fraction(sub))


def _valid(subs) -> bool:
    try:
        keycodec.encode_key(PREFIX, subs)
    except SubscriptError:
        return False
    return True


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(tuple_pairs)
@example(((1,), (1, "a")))
@example(((-1,), (-0.5,)))
@example(((-0.1,), (-0.11,)))
@example(((0.1,), (0.101,)))
@example(((-0.12,), (-0.123,)))
@example((("a",), ("ab",)))
@example(((10**18 - 1,), ("0",)))
def test_order_matches_iris_collation(kc, pair):
    a, b = pair
    assume(_valid(a) and _valid(b))
    key_a, key_b = kc.encode_key(PREFIX, a), kc.encode_key(PREFIX, b)
    model_a, model_b = [model(s) for s in a], [model(s) for s in b]
    assert (key_a < key_b) == (model_a < model_b)
    assert (key_a == key_b) == (model_a == model_b)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=-(10**18) + 1, max_value=10**18 - 1), min_size=2))
def test_integers_sort_numerically(kc, numbers):
    keys = [kc.encode_key(PREFIX, (n,)) for n in numbers]
    assert [n for _, n in sorted(zip(keys, numbers, strict=True))] == sorted(numbers)


def test_model_recognises_canonical_numbers():
    # The model must itself classify like the spec, or the ORDER test proves little.
    assert model("1") == model(1) and model(".5") == model(0.5)
    for text in ("01", "1.0", "-0", "1e3", "+1", " 1", "1.", "0.5", ".", "-", "1.50"):
        assert model(text) == (1, text)


# --- named cases: normalisation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("1", 1),
        (".5", 0.5),
        ("-.5", -0.5),
        (-0.0, 0),
        (0.0, 0),
        ("0", 0),
        (1.0, 1),
        (1e16, 10**16),
        ("10.25", 10.25),
        (b"12", 12),
        (b"ab", "ab"),
        ("-1", -1),
    ],
)
def test_same_subscript(kc, left, right):
    assert kc.encode_key(PREFIX, (left,)) == kc.encode_key(PREFIX, (right,))


@pytest.mark.parametrize(
    "text",
    [
        "01",
        "1.0",
        "-0",
        "1e3",
        "0.5",
        "1.",
        "+1",
        " 1",
        "1 ",
        ".",
        "-",
        "1.50",
        "00",
        "-.",
        "1234567890123456789",
        ".1234567890123456789",
        "1" + "0" * 127,
        "." + "0" * 129 + "1",
    ],
)
def test_numeric_looking_strings_stay_strings(kc, text):
    key = kc.encode_key(PREFIX, (text,))
    assert key == PREFIX + b"\x30" + text.encode() + b"\x00"
    assert kc.decode_subscripts(key, len(PREFIX)) == (text,)
    assert kc.canonical_string(text) == text


def test_encoding_examples(kc):
    def enc(sub):
        return kc.encode_key(b"", (sub,))

    assert enc(0) == b"\x21"
    assert enc(1) == b"\x22\x81\x20\x00"  # "1", e=1
    assert enc(10) == b"\x22\x82\x20\x00"  # "1", e=2
    assert enc(123.45) == b"\x22\x83\x23\x45\x60\x00"  # "12345", e=3
    assert enc(0.5) == b"\x22\x80\x60\x00"  # "5", e=0
    assert enc(0.05) == b"\x22\x7f\x60\x00"  # "5", e=-1
    assert enc(-1) == bytes([0x20, 0xFF - 0x81, 0xFF - 0x20, 0xFF])
    assert enc("ab") == b"\x30ab\x00"


@pytest.mark.parametrize(
    ("sub", "text"),
    [
        (1, "1"),
        (-1.5, "-1.5"),
        (0.5, ".5"),
        (-0.5, "-.5"),
        (0, "0"),
        (-0.0, "0"),
        (1e16, "10000000000000000"),
        (1e-7, ".0000001"),
        ("abc", "abc"),
        (b"x", "x"),
        (10**20, "100000000000000000000"),
        (2.0**60, "1152921504606847000"),
    ],
)
def test_canonical_string(kc, sub, text):
    assert kc.canonical_string(sub) == text


def test_decoded_types(kc):
    subs = (1, 10**20, -(10**126), 0.5, 0.1, ".123456789012345678", "x", 0)
    key = kc.encode_key(PREFIX, subs)
    decoded = kc.decode_subscripts(key, len(PREFIX))
    assert typed(decoded) == typed(subs)
    assert kc.decode_subscript_at(key, len(PREFIX)) == (1, len(PREFIX) + 4)


def test_format_reference(kc):
    assert kc.format_reference("^acct", ("alice", 1, 0.5)) == '^acct("alice",1,.5)'
    assert kc.format_reference("acct", ()) == "^acct"
    assert kc.format_reference("x", ('a"b', "1", "01", -0.0)) == '^x("a""b",1,"01",0)'


# --- named cases: limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    "sub",
    [
        "",
        "\x00",
        "a\x00b",
        b"\xff",
        b"\xc3",
        "\ud800",
        "a\udc00",
        float("nan"),
        float("inf"),
        float("-inf"),
        10**30 + 1,
        -(10**30) - 1,
        10**127,
        1e-130,
        1e200,
        pytest.param(10**5000, id="10**5000"),
        True,
        False,
        None,
        1j,
        [1],
        bytearray(b"x"),
        1234567890123456789,
    ],
)
def test_bad_subscripts(kc, sub):
    with pytest.raises(SubscriptError):
        kc.encode_key(PREFIX, (sub,))


def test_error_messages(kc):
    with pytest.raises(SubscriptError, match="<SUBSCRIPT> empty subscript"):
        kc.encode_key(PREFIX, ("",))
    with pytest.raises(SubscriptError, match="not NoneType"):
        kc.encode_key(PREFIX, (None,))
    with pytest.raises(SubscriptError, match="number out of range"):
        kc.encode_key(PREFIX, (10**30 + 1,))
    with pytest.raises(SubscriptError, match="must be a tuple"):
        kc.encode_key(PREFIX, [1])
    with pytest.raises(TypeError):
        kc.encode_key("g", (1,))


def test_edge_of_range_numbers(kc):
    top = 10**126  # exponent 127
    assert kc.decode_subscripts(kc.encode_key(b"", (top,)), 0) == (top,)
    assert kc.decode_subscripts(kc.encode_key(b"", (1e-129,)), 0) == (1e-129,)  # e = -128
    biggest = 999_999_999_999_999_999
    assert kc.decode_subscripts(kc.encode_key(b"", (-biggest,)), 0) == (-biggest,)
    assert kc.decode_subscripts(kc.encode_key(b"", (-(10**18),)), 0) == (-(10**18),)
    assert kc.decode_subscripts(kc.encode_key(b"", ("." + "0" * 128 + "1",)), 0) == (1e-129,)
    for nineteen_digits in (-(2**63), 2**63 - 1, 2**63, 10**18 + 1):
        with pytest.raises(SubscriptError, match="out of range"):
            kc.encode_key(b"", (nineteen_digits,))


def test_subscript_levels(kc):
    assert len(kc.encode_key(PREFIX, (0,) * SUBSCRIPT_LEVELS_MAX)) == 2 + 255
    with pytest.raises(SubscriptError, match="levels"):
        kc.encode_key(PREFIX, (0,) * (SUBSCRIPT_LEVELS_MAX + 1))


def test_reference_length_boundary(kc):
    # name "g" + NUL (2) + tag + text + NUL: the text length that makes 511 in total.
    fits = "x" * (REFERENCE_BYTES_MAX - len(PREFIX) - 2)
    key = kc.encode_key(PREFIX, (fits,))
    assert len(key) == REFERENCE_BYTES_MAX
    assert kc.decode_key(key) == ("g", (fits,))
    with pytest.raises(SubscriptError, match="longer than 511"):
        kc.encode_key(PREFIX, (fits + "x",))
    with pytest.raises(SubscriptError, match="longer than 511"):
        kc.encode_key(PREFIX, (fits, 0))
    # Numbers at the boundary too: 505 + a 6-byte number = 511.
    assert len(kc.encode_key(PREFIX, ("x" * 501, 1))) == 509
    assert len(kc.encode_key(PREFIX, ("x" * 503, 12))) == 511
    with pytest.raises(SubscriptError):
        kc.encode_key(PREFIX, ("x" * 504, 12))
    with pytest.raises(SubscriptError):
        kc.encode_key(b"g" * 512, ())
    assert kc.encode_key(b"g" * 511, ()) == b"g" * 511


def test_first_problem_wins(kc):
    # Left to right: an invalid subscript after an over-long one reports the length.
    with pytest.raises(SubscriptError, match="longer than"):
        kc.encode_key(PREFIX, ("x" * 600, None))
    with pytest.raises(SubscriptError, match="NoneType"):
        kc.encode_key(PREFIX, (None, "x" * 600))


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("^acct", b"acct\x00"),
        ("acct", b"acct\x00"),
        ("%sys", b"%sys\x00"),
        ("a.b1", b"a.b1\x00"),
        ("A" * GLOBAL_NAME_CHARS_MAX, b"A" * 31 + b"\x00"),
        ("%", b"%\x00"),
    ],
)
def test_good_names(kc, name, encoded):
    assert kc.encode_name(name) == encoded
    assert kc.decode_key(encoded) == (encoded[:-1].decode(), ())


@pytest.mark.parametrize(
    "name",
    [
        "",
        "^",
        "^^a",
        "1a",
        ".a",
        "a.",
        "a%",
        "a-b",
        "a b",
        "é",
        "A" * 32,
        "a\x00",
        "\ud800",
        None,
        b"acct",
    ],
)
def test_bad_names(kc, name):
    with pytest.raises(SubscriptError):
        kc.encode_name(name)


def test_bad_name_message_names_it(kc):
    with pytest.raises(SubscriptError, match="'1abc'"):
        kc.encode_name("1abc")


def test_encode_reference(kc):
    assert kc.encode_reference("^acct", ("a", 1)) == b"acct\x00\x30a\x00\x22\x81\x20\x00"


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"acct",
        b"1a\x00",
        b"g\x00\x22",
        b"g\x00\x22\x81",
        b"g\x00\x22\x81\x00",
        b"g\x00\x22\x81\x10\x00",
        b"g\x00\x22\x81\xb0\x00",
        b"g\x00\x22\x81\x11\x00",
        b"g\x00\x22\x81\x20\x21\x00",
        b"g\x00\x30\x00",
        b"g\x00\x301\x00",
        b"g\x00\x30a",
        b"g\x00\x30\xff\x00",
        b"g\x00\x40",
        b"g\x00\x20\x7e\xdf",
        b"\xe9\x00",
    ],
)
def test_malformed_keys(kc, key):
    with pytest.raises(SubscriptError, match="malformed"):
        kc.decode_key(key)


def test_decode_offsets(kc):
    key = kc.encode_key(PREFIX, ("a", 2))
    assert kc.decode_subscripts(key, len(key)) == ()
    assert kc.decode_subscript_at(key, 2) == ("a", 5)
    assert kc.decode_subscript_at(memoryview(key), 5) == (2, len(key))
    for offset in (-1, len(key)):
        with pytest.raises(SubscriptError):
            kc.decode_subscript_at(key, offset)
    with pytest.raises(SubscriptError):
        kc.decode_subscripts(key, len(key) + 1)


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded", "back"),
    [
        ("abc", b"\x01abc", "abc"),
        ("\ud800", b"\x01\xed\xa0\x80", "\ud800"),
        ("", b"\x01", ""),
        (-42, b"\x02-42", -42),
        (0, b"\x020", 0),
        (2.0, b"\x022", 2),
        (-0.0, b"\x020", 0),
        (1.5, b"\x031.5", 1.5),
        (1e18, b"\x031e+18", 1e18),
        (2.0**60, b"\x031.152921504606847e+18", 2.0**60),
        (b"\x00\xff", b"\x04\x00\xff", b"\x00\xff"),
        (10**40, b"\x02" + b"1" + b"0" * 40, 10**40),
    ],
)
def test_values(kc, value, encoded, back):
    assert kc.encode_value(value) == encoded
    decoded = kc.decode_value(encoded)
    assert decoded == back and type(decoded) is type(back)


@pytest.mark.parametrize(
    "value", [True, None, [1], 1j, bytearray(b"x"), float("nan"), float("inf")]
)
def test_illegal_values(kc, value):
    with pytest.raises(IllegalValueError):
        kc.encode_value(value)


def test_value_length_limits(kc):
    assert len(kc.encode_value("x" * STRING_CHARS_MAX)) == STRING_CHARS_MAX + 1
    assert len(kc.encode_value(b"x" * STRING_CHARS_MAX)) == STRING_CHARS_MAX + 1
    assert kc.decode_value(b"\x01" + b"x" * STRING_CHARS_MAX) == "x" * STRING_CHARS_MAX
    with pytest.raises(MaxStringError):
        kc.encode_value("x" * (STRING_CHARS_MAX + 1))
    with pytest.raises(MaxStringError):
        kc.encode_value(b"x" * (STRING_CHARS_MAX + 1))
    with pytest.raises(MaxStringError):
        kc.encode_value(1 << 12_200_000)  # about 3.67 million digits, refused up front
    with pytest.raises(CorruptError):
        kc.decode_value(b"\x04" + b"x" * (STRING_CHARS_MAX + 1))


def test_big_int_values(kc):
    for value in (10**5000 + 7, -(3**20000)):
        assert kc.decode_value(kc.encode_value(value)) == value
    assert kc.encode_value(10**5000) == b"\x021" + b"0" * 5000


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x05x",
        b"\x00",
        b"\x01\xff",
        b"\x02",
        b"\x02-",
        b"\x02-0",
        b"\x0201",
        b"\x021.5",
        b"\x02 1",
        b"\x03",
        b"\x032.0",
        b"\x032",
        b"\x03nan",
        b"\x03inf",
        b"\x031.50",
        b"\x03x",
        b"\x030.10",
        b"\x031e18",
    ],
)
def test_malformed_values(kc, blob):
    with pytest.raises(CorruptError, match="malformed value"):
        kc.decode_value(blob)


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("12abc", 12),
        ("abc", 0),
        ("-1.5x", -1.5),
        ("", 0),
        (" 3", 0),
        ("+3", 3),
        ("--3", 3),
        ("+-3", -3),
        ("1e3", 1000),
        ("1E-1", 0.1),
        ("1e", 1),
        ("1.e2x", 100),
        (".5", 0.5),
        ("5.", 5),
        (".", 0),
        ("-", 0),
        ("-0", 0),
        ("0.1e1", 1),
        (b"42", 42),
        (b"\xff", 0),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        (7, 7),
        (2.5, 2.5),
        ("1e-400", 0.0),
        ("١٢", 0),
    ],
)
def test_number_value(kc, value, number):
    result = kc.number_value(value)
    assert result == number and type(result) is type(number)


@pytest.mark.parametrize("value", [True, None, [1]])
def test_number_value_rejects(kc, value):
    with pytest.raises(IllegalValueError):
        kc.number_value(value)


def test_same_public_surface():
    import inspect

    for name in keycodec.__all__:
        py = list(inspect.signature(getattr(keycodec, name)).parameters)
        cy = list(inspect.signature(getattr(_core, name)).parameters)
        assert py == cy, name
