"""Client passwords: scrypt hashes for the member config's `[[users]]` and their checks.

Owns the stored form `scrypt$N$r$p$salt_hex$hash_hex` (hashlib.scrypt; new hashes use
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_SALT_BYTES and SCRYPT_HASH_BYTES).

Promises:
- `verify_password(hash_password(pw), pw)` is True and False for any other password;
  the comparison is `hmac.compare_digest`;
- a stored hash that does not parse (`parse_hash`) raises `ConfigError` saying what is
  wrong, never a bare ValueError; its cost is bounded (N a power of two, r and p
  small, 128*N*r*p <= SCRYPT_MAXMEM_BYTES), so a config cannot make a login run
  out of memory or time;
- passwords are never logged or put into a message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

from .constants import (
    SCRYPT_HASH_BYTES,
    SCRYPT_MAXMEM_BYTES,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    SCRYPT_SALT_BYTES,
)
from .errors import ConfigError

__all__ = ["ScryptHash", "hash_password", "verify_password", "generate_password", "parse_hash"]

SCHEME = "scrypt"
SALT_BYTES_MIN = 8
SALT_BYTES_MAX = 64
HASH_BYTES_MIN = 16
HASH_BYTES_MAX = 64
R_MAX = 32
P_MAX = 16
PASSWORD_BYTES = 18  # generate_password: 144 bits, 24 URL-safe characters
_FORM = re.compile(
    r"scrypt\$([1-9][0-9]{0,9})\$([1-9][0-9]{0,3})\$([1-9][0-9]{0,3})\$"
    r"([0-9a-f]+)\$([0-9a-f]+)"
)
_ALLOWED = (
    "expected scrypt$N$r$p$salt_hex$hash_hex (N a power of two >= 2, r in "
    f"1..{R_MAX}, p in 1..{P_MAX}, 128*N*r*p <= {SCRYPT_MAXMEM_BYTES} bytes, "
    f"salt {SALT_BYTES_MIN}..{SALT_BYTES_MAX} and hash {HASH_BYTES_MIN}..{HASH_BYTES_MAX} "
    "bytes in lowercase hex), as irisrep.auth.hash_password makes"
)


class ScryptHash(NamedTuple):
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _password_bytes(password: str | bytes) -> bytes:
    if isinstance(password, str):
        return password.encode("utf-8", "surrogatepass")
    if isinstance(password, (bytes, bytearray)):
        return bytes(password)
    raise TypeError(f"password must be str or bytes, not {type(password).__name__}")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM_BYTES + 1024 * 1024, dklen=dklen
    )


def hash_password(password: str | bytes) -> str:
    """A new salted hash of password in the stored form."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    digest = _scrypt(
        _password_bytes(password), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_HASH_BYTES
    )
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def parse_hash(stored: object) -> ScryptHash:
    """The parts of a stored hash; ConfigError (no key path) if it is not one."""
    if not isinstance(stored, str):
        raise ConfigError(f"a {type(stored).__name__} is not a password hash; {_ALLOWED}")
    m = _FORM.fullmatch(stored)
    if m is None:
        what = "does not start with scrypt$" if not stored.startswith("scrypt$") else "is malformed"
        raise ConfigError(f"the password hash {what}; {_ALLOWED}")
    n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    salt_hex, digest_hex = m.group(4), m.group(5)
    if n < 2 or n & (n - 1):
        raise ConfigError(f"the password hash's N = {n} is not a power of two >= 2; {_ALLOWED}")
    if r > R_MAX or p > P_MAX or 128 * n * r * p > SCRYPT_MAXMEM_BYTES:
        raise ConfigError(f"the password hash's cost (N={n}, r={r}, p={p}) is too high; {_ALLOWED}")
    if len(salt_hex) % 2 or not SALT_BYTES_MIN <= len(salt_hex) // 2 <= SALT_BYTES_MAX:
        raise ConfigError(f"the password hash's salt has a bad length; {_ALLOWED}")
    if len(digest_hex) % 2 or not HASH_BYTES_MIN <= len(digest_hex) // 2 <= HASH_BYTES_MAX:
        raise ConfigError(f"the password hash's hash has a bad length; {_ALLOWED}")
    return ScryptHash(n, r, p, bytes.fromhex(salt_hex), bytes.fromhex(digest_hex))


def verify_password(stored: str, password: str | bytes) -> bool:
    """True when password matches the stored hash (constant-time comparison).
    ConfigError if stored is not a valid hash."""
    h = parse_hash(stored)
    digest = _scrypt(_password_bytes(password), h.salt, h.n, h.r, h.p, len(h.digest))
    return hmac.compare_digest(digest, h.digest)


def generate_password() -> str:
    """A new random password (URL-safe text, 144 bits)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)
