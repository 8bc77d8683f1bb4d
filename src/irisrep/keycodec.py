"""Global references to ordered bytes, and stored values to bytes: the readable reference.

Owns the byte format of B+tree keys (global name + subscripts) and of stored values.
Promises:
- bytewise order of encoded keys is IRIS collation order (numbers in numeric order
  before strings, strings by code point, a node before its descendants);
- every encoded subscript is self-delimiting and none is a prefix of another;
- `encode_key(prefix, decode_subscripts(key, len(prefix))) == key` for every valid key,
  and likewise `encode_value(decode_value(b)) == b` for every valid value;
- the compiled `irisrep._core` versions of these functions agree with this module byte
  for byte and raise the same error class (tests/test_keycodec.py checks both).

This module is the spec in executable form: it favours clarity over speed.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from .constants import (
    GLOBAL_NAME_CHARS_MAX,
    NUMBER_DIGITS_MAX,
    NUMBER_EXPONENT_MAX,
    NUMBER_EXPONENT_MIN,
    REFERENCE_BYTES_MAX,
    STRING_CHARS_MAX,
    SUBSCRIPT_LEVELS_MAX,
)
from .errors import CorruptError, IllegalValueError, MaxStringError, SubscriptError

__all__ = [
    "encode_name",
    "encode_key",
    "encode_reference",
    "decode_key",
    "decode_subscripts",
    "decode_subscript_at",
    "encode_value",
    "decode_value",
    "number_value",
    "canonical_string",
    "format_reference",
]

# Subscript tags. Their order is the collation order of the kinds: negative numbers,
# zero, positive numbers, strings.
TAG_NEGATIVE = 0x20
TAG_ZERO = 0x21
TAG_POSITIVE = 0x22
TAG_STRING = 0x30
# A positive number and a string end at 0x00 (below every digit byte and every
# non-empty continuation); a negative number ends at 0xFF (above every complemented
# digit byte), so a shorter digit string sorts correctly against a longer one.
END_POSITIVE = 0x00
END_NEGATIVE = 0xFF
EXPONENT_BIAS = 0x80

# Value tags.
VALUE_STR = 0x01
VALUE_INT = 0x02
VALUE_FLOAT = 0x03
VALUE_BYTES = 0x04

_ASCII_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NAME_FIRST = frozenset("%" + _ASCII_LETTERS)
_NAME_REST = frozenset(_ASCII_LETTERS + "0123456789.")

# A canonical number as text: an integer without leading zeros (not "-0"), or a
# decimal with no integer "0" and no trailing zero after the point.
_CANONICAL_NUMBER = re.compile(r"0|-?[1-9][0-9]*|-?(?:[1-9][0-9]*)?\.[0-9]*[1-9]")
_INT_TEXT = re.compile(rb"-?(?:0|[1-9][0-9]*)")
# |value| < 10**NUMBER_EXPONENT_MAX is exactly "exponent within range" for an integer;
# comparing first keeps str() away from ints too big to print.
_INT_LIMIT = 10**NUMBER_EXPONENT_MAX
# str(int) is refused beyond sys.get_int_max_str_digits() (4300 by default); bigger
# ints are converted in chunks of this many digits.
_INT_CHUNK_DIGITS = 4000
_LOG10_2 = math.log10(2)
# number_value() gives an int only below this size (digits); bigger results are floats,
# so that a text like "1E999999999" cannot build a gigantic int.
_NUMBER_VALUE_INT_DIGITS_MAX = 4000

# A number is (negative, digits, exponent) with |value| = 0.<digits> * 10**exponent,
# digits having no leading or trailing zero. Zero is the one number with no digits.
Number = tuple[bool, str, int]
_ZERO: Number = (False, "", 0)


# --- errors -----------------------------------------------------------------------------


def _subscript_error(what: str) -> SubscriptError:
    return SubscriptError(f"<SUBSCRIPT> {what}")


def _malformed(key: bytes, offset: int, what: str) -> SubscriptError:
    # Keys are only decoded from verified blocks: this means a bug or corruption.
    return SubscriptError(f"<SUBSCRIPT> malformed encoded key at offset {offset}: {what}: {key!r}")


def _too_long() -> SubscriptError:
    return _subscript_error(f"reference longer than {REFERENCE_BYTES_MAX} encoded bytes")


def _out_of_range() -> SubscriptError:
    return _subscript_error(
        f"number out of range (at most {NUMBER_DIGITS_MAX} significant digits, "
        f"exponent {NUMBER_EXPONENT_MIN}..{NUMBER_EXPONENT_MAX})"
    )


# --- names ------------------------------------------------------------------------------


def _is_valid_name(bare: str) -> bool:
    return (
        0 < len(bare) <= GLOBAL_NAME_CHARS_MAX
        and bare[0] in _NAME_FIRST
        and all(c in _NAME_REST for c in bare[1:])
        and not bare.endswith(".")
    )


def encode_name(name: str) -> bytes:
    """`^acct` or `acct` -> b"acct\\x00"; raises SubscriptError for an invalid name."""
    if not isinstance(name, str):
        raise _subscript_error(f"global name must be str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("^") else name
    if not _is_valid_name(bare):
        raise _subscript_error(
            f"invalid global name {name!r} (1..{GLOBAL_NAME_CHARS_MAX} characters: "
            "'%' or a letter, then letters, digits or '.', not ending in '.')"
        )
    return bare.encode("ascii") + b"\x00"


# --- numbers ----------------------------------------------------------------------------


def _checked_number(negative: bool, digits: str, exponent: int) -> Number | None:
    """The number, or None if it has too many digits or its exponent is out of range."""
    if len(digits) > NUMBER_DIGITS_MAX:
        return None
    if not NUMBER_EXPONENT_MIN <= exponent <= NUMBER_EXPONENT_MAX:
        return None
    return (negative, digits, exponent)


def _number_from_int(value: int) -> Number:
    if value == 0:
        return _ZERO
    magnitude = abs(value)
    if magnitude >= _INT_LIMIT:
        raise _out_of_range()
    text = int.__repr__(magnitude)  # int.__repr__: a subclass may override __str__
    digits = text.rstrip("0")
    number = _checked_number(value < 0, digits, len(text))
    if number is None:
        raise _out_of_range()
    return number


def _number_from_float(value: float) -> Number:
    if math.isnan(value) or math.isinf(value):
        raise _subscript_error(f"number must be finite, not {float.__repr__(value)}")
    if value == 0:
        return _ZERO  # -0.0 too
    # The shortest repr is what the user sees and typed, so it is the number meant:
    # 0.1 is .1, not the binary fraction 0.1000000000000000055511151231257827.
    sign, digit_tuple, exponent = Decimal(float.__repr__(value)).as_tuple()
    text = "".join(map(str, digit_tuple))
    digits = text.rstrip("0")
    number = _checked_number(sign == 1, digits, len(text) + exponent)
    if number is None:
        raise _out_of_range()
    return number


def _number_from_text(text: str) -> Number | None:
    """The number a canonical-number string stands for; None if the string is a string."""
    if _CANONICAL_NUMBER.fullmatch(text) is None:
        return None
    negative = text.startswith("-")
    body = text[1:] if negative else text
    if body == "0":
        return _ZERO
    whole, _, fraction = body.partition(".")
    if whole:
        # "1200" -> 0.12e4, "10.25" -> 0.1025e2
        exponent = len(whole)
        digits = (whole + fraction).rstrip("0")
    else:
        # ".05" -> 0.5e-1
        digits = fraction.lstrip("0")
        exponent = len(digits) - len(fraction)
    return _checked_number(negative, digits, exponent)


def _number_text(number: Number) -> str:
    """IRIS canonical form: 10, -1.5, .5, -.05, 0."""
    negative, digits, exponent = number
    if not digits:
        return "0"
    if len(digits) <= exponent:
        text = digits + "0" * (exponent - len(digits))
    elif exponent > 0:
        text = digits[:exponent] + "." + digits[exponent:]
    else:
        text = "." + "0" * -exponent + digits
    return "-" + text if negative else text


def _number_to_python(number: Number) -> int | float | str:
    """int if integral; else float if the float encodes back to this number; else text."""
    negative, digits, exponent = number
    if not digits:
        return 0
    if len(digits) <= exponent:
        magnitude = int(digits) * 10 ** (exponent - len(digits))
        return -magnitude if negative else magnitude
    text = _number_text(number)
    as_float = float(text)
    try:
        if _number_from_float(as_float) == number:
            return as_float
    except SubscriptError:
        pass
    # e.g. ".123456789012345678": no float has these 18 digits. The canonical text is
    # the same subscript, so it round-trips all the same.
    return text


def _encode_number(number: Number) -> bytes:
    negative, digits, exponent = number
    if not digits:
        return bytes((TAG_ZERO,))
    nibbles = [int(d) + 1 for d in digits]  # 1..10: 0 is left for "no digit"
    if len(nibbles) % 2:
        nibbles.append(0)
    packed = [(nibbles[i] << 4) | nibbles[i + 1] for i in range(0, len(nibbles), 2)]
    if negative:
        # Complementing reverses the order: a bigger magnitude sorts first.
        body = [0xFF - (exponent + EXPONENT_BIAS)] + [0xFF - b for b in packed]
        return bytes([TAG_NEGATIVE, *body, END_NEGATIVE])
    return bytes([TAG_POSITIVE, exponent + EXPONENT_BIAS, *packed, END_POSITIVE])


# --- subscripts -------------------------------------------------------------------------


def _canonical(subscript: object) -> str | Number:
    """A subscript after normalisation: a str for a string subscript, else a Number."""
    if isinstance(subscript, bool):
        # True == 1 in Python but is not a number a user means as a subscript.
        raise _subscript_error("subscript must not be bool (ambiguous)")
    if isinstance(subscript, bytes):
        try:
            subscript = bytes(subscript).decode("utf-8")
        except UnicodeDecodeError:
            raise _subscript_error("bytes subscript is not valid UTF-8") from None
    if isinstance(subscript, str):
        text = str.__str__(subscript)
        if not text:
            raise _subscript_error("empty subscript")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _subscript_error("subscript contains a lone surrogate") from None
        if "\x00" in text:
            raise _subscript_error("subscript contains NUL")
        number = _number_from_text(text)
        return text if number is None else number
    if isinstance(subscript, int):
        return _number_from_int(subscript)
    if isinstance(subscript, float):
        return _number_from_float(subscript)
    raise _subscript_error(
        f"subscript must be str, int, float or bytes, not {type(subscript).__name__}"
    )


def _encode_canonical(canonical: str | Number) -> bytes:
    if isinstance(canonical, str):
        return bytes((TAG_STRING,)) + canonical.encode("utf-8") + b"\x00"
    return _encode_number(canonical)


def encode_key(prefix: bytes, subs: tuple) -> bytes:
    """prefix (an encode_name result, maybe with subscripts) + the encoded subscripts.

    Subscripts are checked left to right; the first one that is invalid, or that takes
    the reference past REFERENCE_BYTES_MAX bytes, raises SubscriptError.
    """
    if not isinstance(prefix, bytes):
        raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
    if not isinstance(subs, tuple):
        raise _subscript_error(f"subscripts must be a tuple, not {type(subs).__name__}")
    if len(subs) > SUBSCRIPT_LEVELS_MAX:
        raise _subscript_error(f"more than {SUBSCRIPT_LEVELS_MAX} subscript levels")
    out = bytearray(prefix)
    if len(out) > REFERENCE_BYTES_MAX:
        raise _too_long()
    for subscript in subs:
        out += _encode_canonical(_canonical(subscript))
        if len(out) > REFERENCE_BYTES_MAX:
            raise _too_long()
    return bytes(out)


def encode_reference(name: str, subs: tuple) -> bytes:
    """encode_key(encode_name(name), subs)."""
    return encode_key(encode_name(name), subs)


def canonical_string(subscript: object) -> str:
    """The IRIS display form of a subscript: 1, -1.5, .5, 0 for numbers; strings as-is."""
    canonical = _canonical(subscript)
    return canonical if isinstance(canonical, str) else _number_text(canonical)


def format_reference(name: str, subs: tuple) -> str:
    """IRIS syntax: ^acct("alice",1,.5). Checks name and subscripts, not the length."""
    bare = encode_name(name)[:-1].decode("ascii")
    if not isinstance(subs, tuple):
        raise _subscript_error(f"subscripts must be a tuple, not {type(subs).__name__}")
    if not subs:
        return "^" + bare
    parts = []
    for subscript in subs:
        canonical = _canonical(subscript)
        if isinstance(canonical, str):
            parts.append('"' + canonical.replace('"', '""') + '"')
        else:
            parts.append(_number_text(canonical))
    return "^" + bare + "(" + ",".join(parts) + ")"


# --- decoding ---------------------------------------------------------------------------


def _as_bytes(key: object) -> bytes:
    # memoryview() rather than bytes(): bytes(5) would silently make five zero bytes.
    return key if isinstance(key, bytes) else memoryview(key).tobytes()


def _decode_number(key: bytes, offset: int) -> tuple[Number, int]:
    negative = key[offset] == TAG_NEGATIVE
    end_byte = END_NEGATIVE if negative else END_POSITIVE
    if offset + 1 >= len(key):
        raise _malformed(key, offset, "number without exponent")
    exponent_byte = key[offset + 1]
    exponent = (0xFF - exponent_byte if negative else exponent_byte) - EXPONENT_BIAS
    end = key.find(bytes((end_byte,)), offset + 2)
    if end < 0:
        raise _malformed(key, offset, "number without terminator")
    digits = []
    for position in range(offset + 2, end):
        byte = 0xFF - key[position] if negative else key[position]
        high, low = byte >> 4, byte & 0x0F
        if not 1 <= high <= 10 or low > 10 or (low == 0 and position != end - 1):
            raise _malformed(key, position, f"bad digit byte 0x{key[position]:02x}")
        digits.append(str(high - 1))
        if low:
            digits.append(str(low - 1))
    text = "".join(digits)
    if not text or len(text) > NUMBER_DIGITS_MAX or text[0] == "0" or text[-1] == "0":
        raise _malformed(key, offset, "non-canonical digit string")
    return (negative, text, exponent), end + 1


def decode_subscript_at(key: bytes, offset: int) -> tuple[int | float | str, int]:
    """(the subscript encoded at offset, the offset just past it)."""
    key = _as_bytes(key)
    if not 0 <= offset < len(key):
        raise _malformed(key, offset, "offset outside the key")
    tag = key[offset]
    if tag == TAG_ZERO:
        return 0, offset + 1
    if tag in (TAG_POSITIVE, TAG_NEGATIVE):
        number, end = _decode_number(key, offset)
        return _number_to_python(number), end
    if tag == TAG_STRING:
        end = key.find(b"\x00", offset + 1)
        if end < 0:
            raise _malformed(key, offset, "string without terminator")
        try:
            text = key[offset + 1 : end].decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(key, offset, "string is not valid UTF-8") from None
        if not text or _number_from_text(text) is not None:
            # An empty or canonical-number string is never encoded as a string.
            raise _malformed(key, offset, f"non-canonical string {text!r}")
        return text, end + 1
    raise _malformed(key, offset, f"unknown subscript tag 0x{tag:02x}")


def decode_subscripts(key: bytes, offset: int) -> tuple:
    """Every subscript from offset to the end of the key."""
    key = _as_bytes(key)
    if not 0 <= offset <= len(key):
        raise _malformed(key, offset, "offset outside the key")
    subs = []
    while offset < len(key):
        subscript, offset = decode_subscript_at(key, offset)
        subs.append(subscript)
    return tuple(subs)


def decode_key(key: bytes) -> tuple[str, tuple]:
    """(global name without "^", subscripts)."""
    key = _as_bytes(key)
    end = key.find(b"\x00")
    if end < 0:
        raise _malformed(key, 0, "name without terminator")
    try:
        name = key[:end].decode("ascii")
    except UnicodeDecodeError:
        raise _malformed(key, 0, "name is not ASCII") from None
    if not _is_valid_name(name):
        raise _malformed(key, 0, f"invalid global name {name!r}")
    return name, decode_subscripts(key, end + 1)


# --- values -----------------------------------------------------------------------------


def _int_to_text(value: int) -> str:
    """Decimal text of any int whose text fits STRING_CHARS_MAX, else MaxStringError."""
    magnitude = abs(value)
    bits = magnitude.bit_length()
    # A b-bit number has at least floor((b - 1) * log10(2)) + 1 digits.
    if bits > 1 and int((bits - 1) * _LOG10_2) + 1 + (value < 0) > STRING_CHARS_MAX + 1:
        raise MaxStringError(f"<MAXSTRING> integer longer than {STRING_CHARS_MAX} digits")
    text = _magnitude_text(magnitude)
    if value < 0:
        text = "-" + text
    if len(text) > STRING_CHARS_MAX:
        raise MaxStringError(f"<MAXSTRING> integer longer than {STRING_CHARS_MAX} digits")
    return text


def _magnitude_text(magnitude: int) -> str:
    if magnitude.bit_length() <= _INT_CHUNK_DIGITS * 3:  # < 10**3612 digits: str() is fine
        return int.__repr__(magnitude)
    # Split in halves around a power of ten; sys.set_int_max_str_digits() would be
    # process-wide, this is not.
    half = magnitude.bit_length() * 3 // 20  # about half the decimal digits
    high, low = divmod(magnitude, 10**half)
    return _magnitude_text(high) + _magnitude_text(low).rjust(half, "0")


def _text_to_int(text: str) -> int:
    if len(text) <= _INT_CHUNK_DIGITS:
        return int(text)
    negative = text.startswith("-")
    body = text[1:] if negative else text
    half = len(body) // 2
    magnitude = _text_to_int(body[:half]) * 10 ** (len(body) - half) + _text_to_int(body[half:])
    return -magnitude if negative else magnitude


def encode_value(value: object) -> bytes:
    """Tag byte + payload; raises IllegalValueError or MaxStringError."""
    if isinstance(value, bool):
        raise IllegalValueError("<ILLEGAL VALUE> values must not be bool (ambiguous)")
    if isinstance(value, str):
        if len(value) > STRING_CHARS_MAX:
            raise MaxStringError(f"<MAXSTRING> string longer than {STRING_CHARS_MAX} characters")
        return bytes((VALUE_STR,)) + value.encode("utf-8", "surrogatepass")
    if isinstance(value, int):
        return bytes((VALUE_INT,)) + _int_to_text(value).encode("ascii")
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise IllegalValueError(
                f"<ILLEGAL VALUE> number must be finite, not {float.__repr__(value)}"
            )
        if value.is_integer() and abs(value) < 1e18:
            # Canonical number form: 2.0 is the number 2, and comes back as int.
            return bytes((VALUE_INT,)) + int.__repr__(int(value)).encode("ascii")
        return bytes((VALUE_FLOAT,)) + float.__repr__(value).encode("ascii")
    if isinstance(value, bytes):
        if len(value) > STRING_CHARS_MAX:
            raise MaxStringError(f"<MAXSTRING> bytes longer than {STRING_CHARS_MAX}")
        return bytes((VALUE_BYTES,)) + value
    raise IllegalValueError(
        f"<ILLEGAL VALUE> values must be str, int, float or bytes, not {type(value).__name__}"
    )


def _malformed_value(data: bytes, what: str) -> CorruptError:
    shown = data[:40] + (b"..." if len(data) > 40 else b"")
    return CorruptError(f"malformed value: {what}: {shown!r}", found=shown)


def decode_value(data: bytes) -> str | int | float | bytes:
    """The value of an encode_value result. Only canonical encodings are accepted."""
    data = _as_bytes(data)
    if not data:
        raise _malformed_value(data, "empty")
    tag, payload = data[0], data[1:]
    if tag == VALUE_STR:
        try:
            text = payload.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _malformed_value(data, "string is not valid UTF-8") from None
        if len(text) > STRING_CHARS_MAX:
            raise _malformed_value(data, "string too long")
        return text
    if tag == VALUE_INT:
        if len(payload) > STRING_CHARS_MAX or not _INT_TEXT.fullmatch(payload) or payload == b"-0":
            raise _malformed_value(data, "bad integer text")
        return _text_to_int(payload.decode("ascii"))
    if tag == VALUE_FLOAT:
        try:
            text = payload.decode("ascii")
            number = float(text)
        except (UnicodeDecodeError, ValueError):
            raise _malformed_value(data, "bad float text") from None
        # Only what encode_value writes: repr of a finite float that is not stored as int.
        if (
            float.__repr__(number) != text
            or math.isnan(number)
            or math.isinf(number)
            or (number.is_integer() and abs(number) < 1e18)
        ):
            raise _malformed_value(data, "bad float text")
        return number
    if tag == VALUE_BYTES:
        if len(payload) > STRING_CHARS_MAX:
            raise _malformed_value(data, "bytes too long")
        return payload
    raise _malformed_value(data, f"unknown tag 0x{tag:02x}")


# --- numeric interpretation -------------------------------------------------------------

# IRIS reads a string as a number by its longest numeric prefix: any run of signs, digits
# with at most one point, then an exponent only if digits follow the E.
_NUMERIC_PREFIX = re.compile(r"([+-]*)([0-9]*)(?:\.([0-9]*))?(?:[Ee]([+-]?[0-9]+))?")
# An exponent beyond this already makes every float 0 or inf; clamping keeps int() away
# from absurd exponent texts.
_NUMBER_VALUE_EXPONENT_CLAMP = 1_000_000


def number_value(value: object) -> int | float:
    """IRIS numeric interpretation ($INCREMENT): "12abc" -> 12, "abc" -> 0, "-1.5x" -> -1.5.

    The result is an int when integral (and under 4000 digits), else the nearest float.
    """
    if isinstance(value, bool):
        raise IllegalValueError("<ILLEGAL VALUE> values must not be bool (ambiguous)")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        value = bytes(value).decode("latin-1")  # only ASCII counts; the rest stops the scan
    if not isinstance(value, str):
        raise IllegalValueError(
            f"<ILLEGAL VALUE> values must be str, int, float or bytes, not {type(value).__name__}"
        )
    signs, whole, fraction, exponent_text = _NUMERIC_PREFIX.match(value).groups()
    fraction = fraction or ""
    if not whole and not fraction:
        return 0  # no digit at all ("", "abc", "-", "."); an exponent needs a mantissa
    negative = signs.count("-") % 2 == 1
    exponent = 0
    if exponent_text is not None:
        exponent_sign = -1 if exponent_text.startswith("-") else 1
        exponent_digits = exponent_text.lstrip("+-").lstrip("0")
        if len(exponent_digits) > 7:
            exponent = exponent_sign * _NUMBER_VALUE_EXPONENT_CLAMP
        else:
            exponent = exponent_sign * min(
                int(exponent_digits or "0"), _NUMBER_VALUE_EXPONENT_CLAMP
            )
    # As a Number: |value| = 0.<digits> * 10**point.
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + exponent - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    if not digits:
        return 0
    if len(digits) <= point <= _NUMBER_VALUE_INT_DIGITS_MAX:
        magnitude = int(digits) * 10 ** (point - len(digits))
        return -magnitude if negative else magnitude
    return float(("-" if negative else "") + "0." + digits + "e" + str(point))
