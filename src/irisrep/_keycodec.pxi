# _keycodec: order-preserving encoding of global references, and the value encoding.
#
# Owns the compiled form of irisrep/keycodec.py, which is the readable spec: the same
# functions with the same signatures, the same bytes and the same error classes (and
# messages). Promises: bytewise order of keys is IRIS collation order, and
# encode_key(prefix, decode_subscripts(key, len(prefix))) == key for every valid key.
# Hot cases (exact str/int/float subscripts, small values) stay in C on a stack buffer;
# rare ones (huge ints, subclasses, malformed input) take Python-level paths.
# Every module-level name here is prefixed _kc_/KC_: all topics share one namespace.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.conversion cimport Py_DTSF_ADD_DOT_0, PyOS_double_to_string, PyOS_string_to_double
from cpython.exc cimport PyErr_Clear, PyErr_ExceptionMatches
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong
from cpython.mem cimport PyMem_Free
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.unicode cimport (PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8, PyUnicode_FromObject,
                              PyUnicode_GET_LENGTH)
from libc.math cimport fabs, floor, isinf, isnan
from libc.string cimport memchr, memcpy, strcmp

import math as _kc_math
import re as _kc_re

from irisrep.constants import (GLOBAL_NAME_CHARS_MAX, NUMBER_DIGITS_MAX, NUMBER_EXPONENT_MAX,
                               NUMBER_EXPONENT_MIN, REFERENCE_BYTES_MAX, STRING_CHARS_MAX,
                               SUBSCRIPT_LEVELS_MAX)
from irisrep.errors import CorruptError, IllegalValueError, MaxStringError, SubscriptError

cdef extern from "Python.h":
    # Declared without Cython's `except NULL` so that a lone surrogate can be turned
    # into SubscriptError without the cost of a try block on the hot path.
    const char* _kc_utf8 "PyUnicode_AsUTF8AndSize" (object s, Py_ssize_t* size)


# Compile-time copies of irisrep.constants, for C arrays and loops.
cdef enum:
    KC_NAME_CHARS_MAX = 31
    KC_DIGITS_MAX = 18
    KC_EXPONENT_MIN = -128
    KC_EXPONENT_MAX = 127
    KC_STRING_CHARS_MAX = 3641144
    KC_TAG_NEGATIVE = 0x20
    KC_TAG_ZERO = 0x21
    KC_TAG_POSITIVE = 0x22
    KC_TAG_STRING = 0x30
    KC_EXPONENT_BIAS = 0x80
    KC_VALUE_STR = 0x01
    KC_VALUE_INT = 0x02
    KC_VALUE_FLOAT = 0x03
    KC_VALUE_BYTES = 0x04
    KC_CHAR_0 = 48  # '0', for digit arithmetic in C

if (REFERENCE_BYTES_MAX, SUBSCRIPT_LEVELS_MAX, GLOBAL_NAME_CHARS_MAX, NUMBER_DIGITS_MAX,
        NUMBER_EXPONENT_MIN, NUMBER_EXPONENT_MAX, STRING_CHARS_MAX) != (
        KC_REFERENCE_BYTES_MAX, KC_SUBSCRIPT_LEVELS_MAX, KC_NAME_CHARS_MAX, KC_DIGITS_MAX,
        KC_EXPONENT_MIN, KC_EXPONENT_MAX, KC_STRING_CHARS_MAX):
    raise ImportError("_keycodec limits are out of step with irisrep.constants")

# A number: |value| = 0.d1d2..dn * 10**exp, digits without leading or trailing zero.
# Zero is the one number with ndig == 0.
ctypedef struct _kc_num:
    bint neg
    int ndig
    int exp
    unsigned char dig[24]

# An integer up to 2**53 converts to double and back exactly, so its float form needs
# no repr(); above it the shortest repr may have fewer digits than the integer.
cdef double KC_FLOAT_EXACT_INT = 9007199254740992.0

_kc_INT_LIMIT = 10 ** NUMBER_EXPONENT_MAX
_kc_INT_CHUNK_DIGITS = 4000
_kc_LOG10_2 = _kc_math.log10(2)
_kc_INT_TEXT = _kc_re.compile(rb"-?(?:0|[1-9][0-9]*)")
_kc_NUMERIC_PREFIX = _kc_re.compile(r"([+-]*)([0-9]*)(?:\.([0-9]*))?(?:[Ee]([+-]?[0-9]+))?")
_kc_NUMBER_VALUE_EXPONENT_CLAMP = 1_000_000
_kc_NUMBER_VALUE_INT_DIGITS_MAX = 4000


# --- errors -----------------------------------------------------------------------------

cdef object _kc_subscript_error(str what):
    return SubscriptError("<SUBSCRIPT> " + what)


cdef object _kc_too_long():
    return _kc_subscript_error(f"reference longer than {REFERENCE_BYTES_MAX} encoded bytes")


cdef object _kc_out_of_range():
    return _kc_subscript_error(
        f"number out of range (at most {NUMBER_DIGITS_MAX} significant digits, "
        f"exponent {NUMBER_EXPONENT_MIN}..{NUMBER_EXPONENT_MAX})"
    )


cdef object _kc_malformed(const unsigned char* key, Py_ssize_t n, Py_ssize_t offset, str what):
    # Keys are only decoded from verified blocks: this means a bug or corruption.
    cdef bytes shown = PyBytes_FromStringAndSize(<const char*>key, n)
    return SubscriptError(f"<SUBSCRIPT> malformed encoded key at offset {offset}: {what}: "
                          f"{shown!r}")


cdef object _kc_malformed_value(const unsigned char* data, Py_ssize_t n, str what):
    cdef bytes shown = PyBytes_FromStringAndSize(<const char*>data, min(n, 40))
    if n > 40:
        shown += b"..."
    return CorruptError(f"malformed value: {what}: {shown!r}", found=shown)


cdef const char* _kc_utf8_or_empty(str s, Py_ssize_t* n, bint* surrogate) except NULL:
    """UTF-8 of s; for a str with lone surrogates, "" and surrogate[0] set instead."""
    cdef const char* p = _kc_utf8(s, n)
    surrogate[0] = False
    if p == NULL:
        if not PyErr_ExceptionMatches(UnicodeEncodeError):
            return NULL  # MemoryError and the like propagate
        PyErr_Clear()
        surrogate[0] = True
        n[0] = 0
        return ""
    return p


# --- names ------------------------------------------------------------------------------

cdef inline bint _kc_is_letter(unsigned char c) noexcept:
    return (c >= b'A' and c <= b'Z') or (c >= b'a' and c <= b'z')


cdef bint _kc_name_ok(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    cdef unsigned char c
    if n < 1 or n > KC_NAME_CHARS_MAX:
        return False
    if not (p[0] == b'%' or _kc_is_letter(p[0])):
        return False
    for i in range(1, n):
        c = p[i]
        if not (_kc_is_letter(c) or (c >= b'0' and c <= b'9') or c == b'.'):
            return False
    return p[n - 1] != b'.'


def encode_name(name):
    """`^acct` or `acct` -> b"acct\\x00"; raises SubscriptError for an invalid name."""
    cdef Py_ssize_t n = 0
    cdef bint surrogate = False
    cdef const char* p
    cdef bytes out
    if not isinstance(name, str):
        raise _kc_subscript_error(f"global name must be str, not {type(name).__name__}")
    p = _kc_utf8_or_empty(name, &n, &surrogate)  # a lone surrogate: simply not valid
    if n > 0 and p[0] == b'^':
        p += 1
        n -= 1
    if surrogate or not _kc_name_ok(<const unsigned char*>p, n):
        raise _kc_subscript_error(
            f"invalid global name {name!r} (1..{GLOBAL_NAME_CHARS_MAX} characters: "
            "'%' or a letter, then letters, digits or '.', not ending in '.')"
        )
    out = PyBytes_FromStringAndSize(NULL, n + 1)
    memcpy(PyBytes_AS_STRING(out), p, n)
    PyBytes_AS_STRING(out)[n] = 0
    return out


# --- numbers ----------------------------------------------------------------------------

cdef int _kc_num_from_ull(_kc_num* num, unsigned long long u, bint neg) noexcept:
    """Fill num from a magnitude; -1 if it has more than KC_DIGITS_MAX digits."""
    cdef unsigned char tmp[24]
    cdef int n = 0
    cdef int low = 0
    cdef int j
    num.neg = neg
    num.exp = 0
    if u == 0:
        num.ndig = 0
        num.neg = False
        return 0
    while u:
        tmp[n] = <unsigned char>(u % 10)  # least significant first
        u //= 10
        n += 1
    while tmp[low] == 0:
        low += 1
    if n - low > KC_DIGITS_MAX:
        return -1
    num.exp = n
    num.ndig = n - low
    for j in range(num.ndig):
        num.dig[j] = tmp[n - 1 - j]
    return 0


cdef int _kc_num_from_repr(_kc_num* num, const char* s) noexcept:
    """Fill num from a float repr ("-1.5", "1e+16", "1.5e-07"); -1 if out of range."""
    cdef unsigned char mant[40]
    cdef int m = 0
    cdef int point = -1
    cdef int exp10 = 0
    cdef int exp_sign = 1
    cdef int lead = 0
    cdef int last
    cdef int j
    cdef Py_ssize_t i = 0
    num.neg = s[0] == b'-'
    if num.neg:
        i = 1
    while s[i] != 0 and s[i] != b'e' and s[i] != b'E':
        if s[i] == b'.':
            point = m
        elif m < 40:
            mant[m] = <unsigned char>(s[i] - KC_CHAR_0)
            m += 1
        i += 1
    if point < 0:
        point = m
    if s[i] != 0:
        i += 1
        if s[i] == b'-':
            exp_sign = -1
            i += 1
        elif s[i] == b'+':
            i += 1
        while s[i] != 0:
            exp10 = exp10 * 10 + (s[i] - KC_CHAR_0)
            i += 1
    while lead < m and mant[lead] == 0:
        lead += 1
    if lead == m:
        num.ndig = 0
        num.neg = False
        num.exp = 0
        return 0
    last = m - 1
    while mant[last] == 0:
        last -= 1
    num.ndig = last - lead + 1
    num.exp = point + exp_sign * exp10 - lead
    if num.ndig > KC_DIGITS_MAX or num.exp < KC_EXPONENT_MIN or num.exp > KC_EXPONENT_MAX:
        return -1
    for j in range(num.ndig):
        num.dig[j] = mant[lead + j]
    return 0


cdef bint _kc_num_from_text(_kc_num* num, const unsigned char* s, Py_ssize_t n) noexcept:
    """True (num filled) if s is a canonical, representable number; else it is a string.

    Canonical: -?(0|[1-9][0-9]*) but not "-0", or -?([1-9][0-9]*)?\\.[0-9]*[1-9].
    """
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t ws
    cdef Py_ssize_t we
    cdef Py_ssize_t fs
    cdef Py_ssize_t last
    cdef Py_ssize_t z
    cdef Py_ssize_t ndig
    cdef Py_ssize_t e
    cdef Py_ssize_t j
    num.neg = False
    if n > 0 and s[0] == b'-':
        num.neg = True
        i = 1
    if i == n:
        return False
    if s[i] == b'0':
        if n == 1:  # "0" only: "-0", "01", "0.5" are strings
            num.ndig = 0
            num.exp = 0
            return True
        return False
    ws = i
    while i < n and s[i] >= b'0' and s[i] <= b'9':
        i += 1
    we = i
    if i == n:
        # Integer form (the whole part starts with 1..9): trailing zeros are exponent.
        last = n - 1
        while s[last] == b'0':
            last -= 1
        ndig = last - ws + 1
        e = we - ws
        if ndig > KC_DIGITS_MAX or e > KC_EXPONENT_MAX:
            return False
        for j in range(ndig):
            num.dig[j] = s[ws + j] - KC_CHAR_0
        num.ndig = <int>ndig
        num.exp = <int>e
        return True
    if s[i] != b'.':
        return False
    i += 1
    fs = i
    while i < n and s[i] >= b'0' and s[i] <= b'9':
        i += 1
    if i != n or fs == n or s[n - 1] == b'0':
        return False
    if we > ws:
        ndig = (we - ws) + (n - fs)
        e = we - ws
        if ndig > KC_DIGITS_MAX or e > KC_EXPONENT_MAX:
            return False
        for j in range(we - ws):
            num.dig[j] = s[ws + j] - KC_CHAR_0
        for j in range(n - fs):
            num.dig[we - ws + j] = s[fs + j] - KC_CHAR_0
    else:
        z = 0
        while s[fs + z] == b'0':
            z += 1
        ndig = n - fs - z
        e = -z
        if ndig > KC_DIGITS_MAX or e < KC_EXPONENT_MIN:
            return False
        for j in range(ndig):
            num.dig[j] = s[fs + z + j] - KC_CHAR_0
    num.ndig = <int>ndig
    num.exp = <int>e
    return True


cdef int _kc_num_from_float(_kc_num* num, double f) except -1:
    cdef char* text
    cdef int rc
    if isnan(f) or isinf(f):
        raise _kc_subscript_error(f"number must be finite, not {f!r}")
    if f == floor(f) and fabs(f) <= KC_FLOAT_EXACT_INT:
        # repr() of such a float is its exact integer value.
        if f < 0:
            _kc_num_from_ull(num, <unsigned long long>(-f), True)
        else:
            _kc_num_from_ull(num, <unsigned long long>f, False)
        return 0
    # The shortest repr is the number meant: 0.1 is .1, not the binary fraction.
    text = PyOS_double_to_string(f, b'r', 0, 0, NULL)
    rc = _kc_num_from_repr(num, text)
    PyMem_Free(text)
    if rc < 0:
        raise _kc_out_of_range()
    return 0


cdef int _kc_num_from_big_int(_kc_num* num, object value) except -1:
    # Beyond long long: Python arithmetic, and never str() of a huge int.
    cdef bytes text
    cdef Py_ssize_t ndig
    cdef Py_ssize_t j
    magnitude = abs(value)
    if magnitude >= _kc_INT_LIMIT:
        raise _kc_out_of_range()
    text = int.__repr__(magnitude).encode("ascii")
    ndig = len(text.rstrip(b"0"))
    if ndig > KC_DIGITS_MAX:
        raise _kc_out_of_range()
    num.neg = value < 0
    num.ndig = <int>ndig
    num.exp = <int>len(text)
    for j in range(ndig):
        num.dig[j] = text[j] - KC_CHAR_0
    return 0


cdef int _kc_num_from_int(_kc_num* num, object value) except -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        return _kc_num_from_big_int(num, value)
    if x < 0:
        # -(x + 1) + 1 keeps LLONG_MIN in range.
        if _kc_num_from_ull(num, <unsigned long long>(-(x + 1)) + 1, True) < 0:
            raise _kc_out_of_range()
    elif _kc_num_from_ull(num, <unsigned long long>x, False) < 0:
        raise _kc_out_of_range()
    return 0


cdef str _kc_num_text(const _kc_num* num):
    """IRIS canonical form: 10, -1.5, .5, -.05, 0."""
    cdef char out[320]
    cdef Py_ssize_t k = 0
    cdef int j
    if num.ndig == 0:
        return "0"
    if num.neg:
        out[k] = b'-'
        k += 1
    if num.ndig <= num.exp:
        for j in range(num.ndig):
            out[k] = <char>(KC_CHAR_0 + num.dig[j])
            k += 1
        for j in range(num.exp - num.ndig):
            out[k] = b'0'
            k += 1
    elif num.exp > 0:
        for j in range(num.ndig):
            if j == num.exp:
                out[k] = b'.'
                k += 1
            out[k] = <char>(KC_CHAR_0 + num.dig[j])
            k += 1
    else:
        out[k] = b'.'
        k += 1
        for j in range(-num.exp):
            out[k] = b'0'
            k += 1
        for j in range(num.ndig):
            out[k] = <char>(KC_CHAR_0 + num.dig[j])
            k += 1
    return PyUnicode_DecodeASCII(out, k, NULL)


cdef Py_ssize_t _kc_put_num(unsigned char* buf, Py_ssize_t pos, const _kc_num* num) except -1:
    cdef Py_ssize_t need
    cdef int j
    cdef unsigned char b
    if num.ndig == 0:
        if pos + 1 > KC_REFERENCE_BYTES_MAX:
            raise _kc_too_long()
        buf[pos] = KC_TAG_ZERO
        return pos + 1
    need = 3 + (num.ndig + 1) // 2
    if pos + need > KC_REFERENCE_BYTES_MAX:
        raise _kc_too_long()
    # Nibbles are digit + 1 so that 0 means "no digit" and sorts below every digit.
    if num.neg:
        # Complemented: a bigger magnitude sorts first; 0xFF ends above every digit byte.
        buf[pos] = KC_TAG_NEGATIVE
        buf[pos + 1] = <unsigned char>(0xFF - (num.exp + KC_EXPONENT_BIAS))
        pos += 2
        for j in range(0, num.ndig, 2):
            b = (num.dig[j] + 1) << 4
            if j + 1 < num.ndig:
                b |= num.dig[j + 1] + 1
            buf[pos] = 0xFF - b
            pos += 1
        buf[pos] = 0xFF
    else:
        buf[pos] = KC_TAG_POSITIVE
        buf[pos + 1] = <unsigned char>(num.exp + KC_EXPONENT_BIAS)
        pos += 2
        for j in range(0, num.ndig, 2):
            b = (num.dig[j] + 1) << 4
            if j + 1 < num.ndig:
                b |= num.dig[j + 1] + 1
            buf[pos] = b
            pos += 1
        buf[pos] = 0x00
    return pos + 1


# --- subscripts -------------------------------------------------------------------------

cdef inline bint _kc_may_be_number(unsigned char c) noexcept:
    # Only these can start a canonical number; every other string skips the parse.
    return c == b'-' or c == b'.' or (c >= b'0' and c <= b'9')


cdef const char* _kc_str_utf8(str s, Py_ssize_t* n) except NULL:
    """UTF-8 of a string subscript, after the empty, lone-surrogate and NUL checks."""
    cdef bint surrogate = False
    cdef const char* p = _kc_utf8_or_empty(s, n, &surrogate)
    if surrogate:
        raise _kc_subscript_error("subscript contains a lone surrogate")
    if n[0] == 0:
        raise _kc_subscript_error("empty subscript")
    if memchr(p, 0, n[0]) != NULL:
        raise _kc_subscript_error("subscript contains NUL")
    return p


cdef object _kc_classify(object sub, _kc_num* num):
    """A rare subscript type: its exact str, or None when num now holds the number."""
    if isinstance(sub, bool):
        # True == 1 in Python but is not a number a user means as a subscript.
        raise _kc_subscript_error("subscript must not be bool (ambiguous)")
    if isinstance(sub, bytes):
        try:
            return PyUnicode_DecodeUTF8(<char*>PyBytes_AS_STRING(sub), PyBytes_GET_SIZE(sub), NULL)
        except UnicodeDecodeError:
            raise _kc_subscript_error("bytes subscript is not valid UTF-8") from None
    if isinstance(sub, str):
        return PyUnicode_FromObject(sub)
    if isinstance(sub, int):
        _kc_num_from_int(num, sub)
        return None
    if isinstance(sub, float):
        _kc_num_from_float(num, float(sub))
        return None
    raise _kc_subscript_error(
        f"subscript must be str, int, float or bytes, not {type(sub).__name__}"
    )


cdef Py_ssize_t _kc_put_str(unsigned char* buf, Py_ssize_t pos, str s) except -1:
    cdef Py_ssize_t n = 0
    cdef _kc_num num
    cdef const char* p = _kc_str_utf8(s, &n)
    if _kc_may_be_number(p[0]) and _kc_num_from_text(&num, <const unsigned char*>p, n):
        return _kc_put_num(buf, pos, &num)
    if pos + n + 2 > KC_REFERENCE_BYTES_MAX:
        raise _kc_too_long()
    buf[pos] = KC_TAG_STRING
    memcpy(buf + pos + 1, p, n)
    buf[pos + n + 1] = 0x00  # below every UTF-8 byte: "a" sorts before "ab"
    return pos + n + 2


cdef Py_ssize_t _kc_put_subscript(unsigned char* buf, Py_ssize_t pos, object sub) except -1:
    cdef _kc_num num
    cdef object t = type(sub)
    if t is str:
        return _kc_put_str(buf, pos, <str>sub)
    if t is int:
        _kc_num_from_int(&num, sub)
        return _kc_put_num(buf, pos, &num)
    if t is float:
        _kc_num_from_float(&num, PyFloat_AS_DOUBLE(sub))
        return _kc_put_num(buf, pos, &num)
    text = _kc_classify(sub, &num)
    if text is None:
        return _kc_put_num(buf, pos, &num)
    return _kc_put_str(buf, pos, <str>text)


cdef Py_ssize_t kc_put_subscripts(unsigned char* buf, Py_ssize_t pos, tuple subs) except -1:
    cdef Py_ssize_t i
    cdef Py_ssize_t count = PyTuple_GET_SIZE(subs)
    if count > KC_SUBSCRIPT_LEVELS_MAX:
        raise _kc_subscript_error(f"more than {SUBSCRIPT_LEVELS_MAX} subscript levels")
    if pos > KC_REFERENCE_BYTES_MAX:
        raise _kc_too_long()
    for i in range(count):
        pos = _kc_put_subscript(buf, pos, subs[i])
    return pos


cdef bytes kc_encode_key(bytes prefix, tuple subs):
    # A stack buffer: as cheap as a preallocated one, and safe under any threading.
    cdef unsigned char buf[KC_KEY_BUFFER_BYTES]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix)
    cdef Py_ssize_t end
    if PyTuple_GET_SIZE(subs) > KC_SUBSCRIPT_LEVELS_MAX:
        raise _kc_subscript_error(f"more than {SUBSCRIPT_LEVELS_MAX} subscript levels")
    if n > KC_REFERENCE_BYTES_MAX:
        raise _kc_too_long()
    memcpy(buf, PyBytes_AS_STRING(prefix), n)
    end = kc_put_subscripts(buf, n, subs)
    return PyBytes_FromStringAndSize(<const char*>buf, end)


def encode_key(prefix, subs):
    """prefix (an encode_name result, maybe with subscripts) + the encoded subscripts.

    Subscripts are checked left to right; the first one that is invalid, or that takes
    the reference past REFERENCE_BYTES_MAX bytes, raises SubscriptError.
    """
    if type(prefix) is not bytes:
        if not isinstance(prefix, bytes):
            raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
        prefix = bytes(prefix)
    if not isinstance(subs, tuple):
        raise _kc_subscript_error(f"subscripts must be a tuple, not {type(subs).__name__}")
    return kc_encode_key(<bytes>prefix, <tuple>subs)


def encode_reference(name, subs):
    """encode_key(encode_name(name), subs)."""
    return encode_key(encode_name(name), subs)


cdef str _kc_canonical_text(object sub, bint* is_number):
    """The display form of a subscript, and whether it is a number."""
    cdef _kc_num num
    cdef Py_ssize_t n = 0
    cdef const char* p
    cdef object t = type(sub)
    if t is int:
        _kc_num_from_int(&num, sub)
        text = None
    elif t is float:
        _kc_num_from_float(&num, PyFloat_AS_DOUBLE(sub))
        text = None
    elif t is str:
        text = sub
    else:
        text = _kc_classify(sub, &num)
    if text is None:
        is_number[0] = True
        return _kc_num_text(&num)
    p = _kc_str_utf8(<str>text, &n)
    # A canonical-number string's display form is itself.
    is_number[0] = _kc_may_be_number(p[0]) and _kc_num_from_text(
        &num, <const unsigned char*>p, n)
    return <str>text


def canonical_string(subscript):
    """The IRIS display form of a subscript: 1, -1.5, .5, 0 for numbers; strings as-is."""
    cdef bint is_number = False
    return _kc_canonical_text(subscript, &is_number)


def format_reference(name, subs):
    """IRIS syntax: ^acct("alice",1,.5). Checks name and subscripts, not the length."""
    cdef bint is_number = False
    cdef bytes encoded = encode_name(name)
    # No negative slice: _core is compiled with wraparound=False.
    cdef str bare = encoded[:len(encoded) - 1].decode("ascii")
    if not isinstance(subs, tuple):
        raise _kc_subscript_error(f"subscripts must be a tuple, not {type(subs).__name__}")
    if not subs:
        return "^" + bare
    parts = []
    for sub in <tuple>subs:
        text = _kc_canonical_text(sub, &is_number)
        parts.append(text if is_number else '"' + text.replace('"', '""') + '"')
    return "^" + bare + "(" + ",".join(parts) + ")"


# --- decoding ---------------------------------------------------------------------------

cdef Py_ssize_t _kc_read_num(const unsigned char* key, Py_ssize_t n, Py_ssize_t pos,
                             _kc_num* num) except -1:
    """Parse and check the number at key[pos]; return the offset past it."""
    cdef bint neg = key[pos] == KC_TAG_NEGATIVE
    cdef unsigned char end_byte = 0xFF if neg else 0x00
    cdef const unsigned char* hit
    cdef Py_ssize_t end
    cdef Py_ssize_t i
    cdef unsigned char b
    cdef unsigned char high
    cdef unsigned char low
    cdef int ndig = 0
    if pos + 1 >= n:
        raise _kc_malformed(key, n, pos, "number without exponent")
    num.neg = neg
    num.exp = (0xFF - key[pos + 1] if neg else key[pos + 1]) - KC_EXPONENT_BIAS
    hit = <const unsigned char*>memchr(key + pos + 2, end_byte, n - pos - 2)
    if hit == NULL:
        raise _kc_malformed(key, n, pos, "number without terminator")
    end = hit - key
    for i in range(pos + 2, end):
        b = 0xFF - key[i] if neg else key[i]
        high = b >> 4
        low = b & 0x0F
        if high < 1 or high > 10 or low > 10 or (low == 0 and i != end - 1):
            raise _kc_malformed(key, n, i, f"bad digit byte 0x{key[i]:02x}")
        if ndig < 22:
            num.dig[ndig] = high - 1
            if low:
                num.dig[ndig + 1] = low - 1
        ndig += 2 if low else 1
    if (ndig == 0 or ndig > KC_DIGITS_MAX or num.dig[0] == 0
            or num.dig[ndig - 1] == 0):
        raise _kc_malformed(key, n, pos, "non-canonical digit string")
    num.ndig = ndig
    return end + 1


cdef object _kc_num_to_python(const _kc_num* num):
    """int if integral; else float if the float encodes back to this number; else text."""
    cdef long long v = 0
    cdef int j
    cdef double f
    cdef _kc_num back
    cdef str text
    for j in range(num.ndig):
        v = v * 10 + num.dig[j]
    if num.ndig <= num.exp:
        if num.exp <= KC_DIGITS_MAX:
            for j in range(num.exp - num.ndig):
                v *= 10
            return PyLong_FromLongLong(-v if num.neg else v)
        scale = <object>(num.exp - num.ndig)  # a Python int: C ** would give a double
        magnitude = PyLong_FromLongLong(v) * 10 ** scale
        return -magnitude if num.neg else magnitude
    text = _kc_num_text(num)
    f = float(text)
    if num.ndig <= 15:
        # Up to DBL_DIG digits a decimal survives the trip through double and repr.
        return f
    try:
        _kc_num_from_float(&back, f)
    except SubscriptError:
        return text
    if back.neg == num.neg and back.exp == num.exp and back.ndig == num.ndig:
        for j in range(num.ndig):
            if back.dig[j] != num.dig[j]:
                return text
        return f
    # e.g. ".123456789012345678": no float has these 18 digits. The canonical text is
    # the same subscript, so it round-trips all the same.
    return text


cdef object kc_decode_subscript(const unsigned char* key, Py_ssize_t n, Py_ssize_t* pos):
    cdef Py_ssize_t at = pos[0]
    cdef unsigned char tag
    cdef const unsigned char* hit
    cdef Py_ssize_t end
    cdef _kc_num num
    cdef str text
    if at < 0 or at >= n:
        raise _kc_malformed(key, n, at, "offset outside the key")
    tag = key[at]
    if tag == KC_TAG_ZERO:
        pos[0] = at + 1
        return 0
    if tag == KC_TAG_POSITIVE or tag == KC_TAG_NEGATIVE:
        pos[0] = _kc_read_num(key, n, at, &num)
        return _kc_num_to_python(&num)
    if tag == KC_TAG_STRING:
        hit = <const unsigned char*>memchr(key + at + 1, 0, n - at - 1)
        if hit == NULL:
            raise _kc_malformed(key, n, at, "string without terminator")
        end = hit - key
        try:
            text = PyUnicode_DecodeUTF8(<char*>key + at + 1, end - at - 1, NULL)
        except UnicodeDecodeError:
            raise _kc_malformed(key, n, at, "string is not valid UTF-8") from None
        if end == at + 1 or (_kc_may_be_number(key[at + 1])
                             and _kc_num_from_text(&num, key + at + 1, end - at - 1)):
            # An empty or canonical-number string is never encoded as a string.
            raise _kc_malformed(key, n, at, f"non-canonical string {text!r}")
        pos[0] = end + 1
        return text
    raise _kc_malformed(key, n, at, f"unknown subscript tag 0x{tag:02x}")


cdef Py_ssize_t kc_subscript_end(const unsigned char* key, Py_ssize_t n,
                                 Py_ssize_t pos) except -1:
    cdef const unsigned char* hit
    cdef _kc_num num
    if pos < 0 or pos >= n:
        raise _kc_malformed(key, n, pos, "offset outside the key")
    if key[pos] == KC_TAG_ZERO:
        return pos + 1
    if key[pos] == KC_TAG_POSITIVE or key[pos] == KC_TAG_NEGATIVE:
        return _kc_read_num(key, n, pos, &num)
    if key[pos] == KC_TAG_STRING:
        hit = <const unsigned char*>memchr(key + pos + 1, 0, n - pos - 1)
        if hit == NULL:
            raise _kc_malformed(key, n, pos, "string without terminator")
        return hit - key + 1
    raise _kc_malformed(key, n, pos, f"unknown subscript tag 0x{key[pos]:02x}")


cdef tuple kc_decode_subscripts(const unsigned char* key, Py_ssize_t n, Py_ssize_t pos):
    cdef list subs = []
    if pos < 0 or pos > n:
        raise _kc_malformed(key, n, pos, "offset outside the key")
    while pos < n:
        subs.append(kc_decode_subscript(key, n, &pos))
    return tuple(subs)


cdef bytes _kc_as_bytes(object data):
    # memoryview() rather than bytes(): bytes(5) would silently make five zero bytes.
    if isinstance(data, bytes):
        return <bytes>data
    return memoryview(data).tobytes()


def decode_subscript_at(key, Py_ssize_t offset):
    """(the subscript encoded at offset, the offset just past it)."""
    cdef bytes k = _kc_as_bytes(key)
    cdef Py_ssize_t pos = offset
    value = kc_decode_subscript(<const unsigned char*>PyBytes_AS_STRING(k),
                                PyBytes_GET_SIZE(k), &pos)
    return value, pos


def decode_subscripts(key, Py_ssize_t offset):
    """Every subscript from offset to the end of the key."""
    cdef bytes k = _kc_as_bytes(key)
    return kc_decode_subscripts(<const unsigned char*>PyBytes_AS_STRING(k),
                                PyBytes_GET_SIZE(k), offset)


def decode_key(key):
    """(global name without "^", subscripts)."""
    cdef bytes k = _kc_as_bytes(key)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(k)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(k)
    cdef const unsigned char* hit = <const unsigned char*>memchr(p, 0, n)
    cdef Py_ssize_t end
    cdef Py_ssize_t i
    if hit == NULL:
        raise _kc_malformed(p, n, 0, "name without terminator")
    end = hit - p
    for i in range(end):
        if p[i] >= 0x80:
            raise _kc_malformed(p, n, 0, "name is not ASCII")
    name = PyUnicode_DecodeASCII(<char*>p, end, NULL)
    if not _kc_name_ok(p, end):
        raise _kc_malformed(p, n, 0, f"invalid global name {name!r}")
    return name, kc_decode_subscripts(p, n, end + 1)


# --- values -----------------------------------------------------------------------------

cdef bytes _kc_tagged(unsigned char tag, const char* payload, Py_ssize_t n):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + 1)
    cdef char* p = PyBytes_AS_STRING(out)
    p[0] = <char>tag
    memcpy(p + 1, payload, n)
    return out


cdef bytes _kc_int_value(long long x):
    cdef char out[24]
    cdef char tmp[24]
    cdef int k = 0
    cdef int m = 0
    cdef unsigned long long u
    if x < 0:
        out[k] = b'-'
        k += 1
        u = <unsigned long long>(-(x + 1)) + 1
    else:
        u = <unsigned long long>x
    while True:
        tmp[m] = <char>(KC_CHAR_0 + u % 10)
        m += 1
        u //= 10
        if u == 0:
            break
    while m:
        m -= 1
        out[k] = tmp[m]
        k += 1
    return _kc_tagged(KC_VALUE_INT, out, k)


def _kc_magnitude_text(magnitude):
    if magnitude.bit_length() <= _kc_INT_CHUNK_DIGITS * 3:  # < 3613 digits: str() is fine
        return int.__repr__(magnitude)
    # Split in halves around a power of ten; sys.set_int_max_str_digits() would be
    # process-wide, this is not.
    half = magnitude.bit_length() * 3 // 20  # about half the decimal digits
    high, low = divmod(magnitude, 10 ** half)
    return _kc_magnitude_text(high) + _kc_magnitude_text(low).rjust(half, "0")


def _kc_text_to_int(text):
    if len(text) <= _kc_INT_CHUNK_DIGITS:
        return int(text)
    negative = text.startswith("-")
    body = text[1:] if negative else text
    half = len(body) // 2
    magnitude = (_kc_text_to_int(body[:half]) * 10 ** (len(body) - half)
                 + _kc_text_to_int(body[half:]))
    return -magnitude if negative else magnitude


cdef bytes _kc_big_int_value(object value):
    magnitude = abs(value)
    bits = magnitude.bit_length()
    # A b-bit number has at least floor((b - 1) * log10(2)) + 1 digits.
    if bits > 1 and int((bits - 1) * _kc_LOG10_2) + 1 + (value < 0) > STRING_CHARS_MAX + 1:
        raise MaxStringError(f"<MAXSTRING> integer longer than {STRING_CHARS_MAX} digits")
    text = _kc_magnitude_text(magnitude)
    if value < 0:
        text = "-" + text
    if len(text) > STRING_CHARS_MAX:
        raise MaxStringError(f"<MAXSTRING> integer longer than {STRING_CHARS_MAX} digits")
    return bytes((KC_VALUE_INT,)) + text.encode("ascii")


cdef bytes _kc_str_value(str value):
    cdef Py_ssize_t n = 0
    cdef bint surrogate = False
    cdef const char* p
    if PyUnicode_GET_LENGTH(value) > KC_STRING_CHARS_MAX:
        raise MaxStringError(f"<MAXSTRING> string longer than {STRING_CHARS_MAX} characters")
    p = _kc_utf8_or_empty(value, &n, &surrogate)
    if surrogate:
        # Stored as surrogatepass so that any str round-trips.
        return bytes((KC_VALUE_STR,)) + value.encode("utf-8", "surrogatepass")
    return _kc_tagged(KC_VALUE_STR, p, n)


cdef bytes _kc_float_value(double f):
    cdef char* text
    cdef bytes out
    if isnan(f) or isinf(f):
        raise IllegalValueError(f"<ILLEGAL VALUE> number must be finite, not {f!r}")
    if f == floor(f) and fabs(f) < 1e18:
        # Canonical number form: 2.0 is the number 2, and comes back as int.
        return _kc_int_value(<long long>f)
    text = PyOS_double_to_string(f, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        out = _kc_tagged(KC_VALUE_FLOAT, text, len(text))
    finally:
        PyMem_Free(text)
    return out


cdef bytes kc_encode_value(object value):
    cdef int overflow = 0
    cdef long long x
    cdef object t = type(value)
    if t is str:
        return _kc_str_value(<str>value)
    if t is int:
        x = PyLong_AsLongLongAndOverflow(value, &overflow)
        return _kc_big_int_value(value) if overflow else _kc_int_value(x)
    if t is float:
        return _kc_float_value(PyFloat_AS_DOUBLE(value))
    if t is bytes:
        if PyBytes_GET_SIZE(value) > KC_STRING_CHARS_MAX:
            raise MaxStringError(f"<MAXSTRING> bytes longer than {STRING_CHARS_MAX}")
        return _kc_tagged(KC_VALUE_BYTES, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
    # Subclasses and wrong types: the same checks, in the reference's order.
    if isinstance(value, bool):
        raise IllegalValueError("<ILLEGAL VALUE> values must not be bool (ambiguous)")
    if isinstance(value, str):
        return _kc_str_value(PyUnicode_FromObject(value))
    if isinstance(value, int):
        x = PyLong_AsLongLongAndOverflow(value, &overflow)
        return _kc_big_int_value(value) if overflow else _kc_int_value(x)
    if isinstance(value, float):
        return _kc_float_value(float(value))
    if isinstance(value, bytes):
        return kc_encode_value(bytes(value))
    raise IllegalValueError(
        f"<ILLEGAL VALUE> values must be str, int, float or bytes, not {type(value).__name__}"
    )


def encode_value(value):
    """Tag byte + payload; raises IllegalValueError or MaxStringError."""
    return kc_encode_value(value)


cdef object _kc_decode_int_value(const unsigned char* data, Py_ssize_t n):
    cdef const unsigned char* p = data + 1
    cdef Py_ssize_t m = n - 1
    cdef Py_ssize_t i = 0
    cdef long long v = 0
    cdef bint neg = False
    if m > 0 and p[0] == b'-':
        neg = True
        i = 1
    # -?(0|[1-9][0-9]*), not "-0": exactly what the encoder writes.
    if (m > KC_STRING_CHARS_MAX or i == m or (p[i] == b'0' and (m - i > 1 or neg))):
        raise _kc_malformed_value(data, n, "bad integer text")
    for i in range(i, m):
        if p[i] < b'0' or p[i] > b'9':
            raise _kc_malformed_value(data, n, "bad integer text")
    if m - neg <= 18:
        for i in range(neg, m):
            v = v * 10 + (p[i] - KC_CHAR_0)
        return PyLong_FromLongLong(-v if neg else v)
    return _kc_text_to_int(PyUnicode_DecodeASCII(<char*>p, m, NULL))


cdef object _kc_decode_float_value(const unsigned char* data, Py_ssize_t n):
    cdef char text[40]
    cdef char* back
    cdef double f
    cdef bint same
    cdef Py_ssize_t m = n - 1
    if m < 1 or m > 32 or memchr(data + 1, 0, m) != NULL:
        raise _kc_malformed_value(data, n, "bad float text")
    memcpy(text, data + 1, m)
    text[m] = 0
    try:
        f = PyOS_string_to_double(text, NULL, NULL)
    except ValueError:
        raise _kc_malformed_value(data, n, "bad float text") from None
    # Only what encode_value writes: repr of a finite float that is not stored as int.
    if isnan(f) or isinf(f) or (f == floor(f) and fabs(f) < 1e18):
        raise _kc_malformed_value(data, n, "bad float text")
    back = PyOS_double_to_string(f, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    same = strcmp(back, text) == 0
    PyMem_Free(back)
    if not same:
        raise _kc_malformed_value(data, n, "bad float text")
    return f


cdef object kc_decode_value(const unsigned char* data, Py_ssize_t n):
    if n < 1:
        raise _kc_malformed_value(data, n, "empty")
    tag = data[0]
    if tag == KC_VALUE_STR:
        try:
            text = PyUnicode_DecodeUTF8(<char*>data + 1, n - 1, "surrogatepass")
        except UnicodeDecodeError:
            raise _kc_malformed_value(data, n, "string is not valid UTF-8") from None
        if PyUnicode_GET_LENGTH(text) > KC_STRING_CHARS_MAX:
            raise _kc_malformed_value(data, n, "string too long")
        return text
    if tag == KC_VALUE_INT:
        return _kc_decode_int_value(data, n)
    if tag == KC_VALUE_FLOAT:
        return _kc_decode_float_value(data, n)
    if tag == KC_VALUE_BYTES:
        if n - 1 > KC_STRING_CHARS_MAX:
            raise _kc_malformed_value(data, n, "bytes too long")
        return PyBytes_FromStringAndSize(<const char*>data + 1, n - 1)
    raise _kc_malformed_value(data, n, f"unknown tag 0x{tag:02x}")


def decode_value(data):
    """The value of an encode_value result. Only canonical encodings are accepted."""
    cdef bytes b = _kc_as_bytes(data)
    return kc_decode_value(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# --- numeric interpretation -------------------------------------------------------------

def number_value(value):
    """IRIS numeric interpretation ($INCREMENT): "12abc" -> 12, "abc" -> 0, "-1.5x" -> -1.5.

    The result is an int when integral (and under 4000 digits), else the nearest float.
    """
    cdef object t = type(value)
    if t is int or t is float:
        return value
    if isinstance(value, bool):
        raise IllegalValueError("<ILLEGAL VALUE> values must not be bool (ambiguous)")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        value = bytes(value).decode("latin-1")  # only ASCII counts; the rest stops the scan
    if not isinstance(value, str):
        raise IllegalValueError(
            "<ILLEGAL VALUE> values must be str, int, float or bytes, not "
            f"{type(value).__name__}"
        )
    signs, whole, fraction, exponent_text = _kc_NUMERIC_PREFIX.match(value).groups()
    fraction = fraction or ""
    if not whole and not fraction:
        return 0  # no digit at all ("", "abc", "-", "."); an exponent needs a mantissa
    negative = signs.count("-") % 2 == 1
    exponent = 0
    if exponent_text is not None:
        exponent_sign = -1 if exponent_text.startswith("-") else 1
        exponent_digits = exponent_text.lstrip("+-").lstrip("0")
        if len(exponent_digits) > 7:
            exponent = exponent_sign * _kc_NUMBER_VALUE_EXPONENT_CLAMP
        else:
            exponent = exponent_sign * min(int(exponent_digits or "0"),
                                           _kc_NUMBER_VALUE_EXPONENT_CLAMP)
    # As a number: |value| = 0.<digits> * 10**point.
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + exponent - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    if not digits:
        return 0
    if len(digits) <= point <= _kc_NUMBER_VALUE_INT_DIGITS_MAX:
        magnitude = int(digits) * 10 ** (point - len(digits))
        return -magnitude if negative else magnitude
    return float(("-" if negative else "") + "0." + digits + "e" + str(point))
