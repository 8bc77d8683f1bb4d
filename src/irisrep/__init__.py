"""irisrep: InterSystems IRIS-style data resiliency for Python.

`irisrep.open(path)` opens (creating if missing) a local database of globals; the
errors of DESIGN.md's tree are importable from here. See ARCHITECTURE.md for the
layers.
"""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"


def open(path, **options):  # noqa: A001 - the API name is irisrep.open
    """Open (creating if missing) the instance directory at path; returns a Database.

    Options: create=True, direct="optional" ("required", "disabled"),
    pool_blocks (buffer pool size in 8 KiB blocks), fs (the file-system seam).
    """
    from .database import Database

    return Database(path, **options)


def connect(addresses, **options):
    """Connect to the primary among member addresses ("host:port" or a list of them);
    returns a Connection with the Database API (`globals`, `transaction`, `lock`,
    `status()`). Options: user, password, timeout, request_timeout."""
    from .client import connect as _connect

    return _connect(addresses, **options)


def __getattr__(name):
    # Lazy so that `import irisrep` stays cheap and the CLI starts fast.
    if name in ("Database", "Global"):
        from . import database

        return getattr(database, name)
    if name == "Member":
        from .member import Member

        return Member
    if name == "check_integrity":
        from .integrity import check

        return check
    raise AttributeError(f"module 'irisrep' has no attribute {name!r}")


__all__ = [  # noqa: F405 - lazy names come from __getattr__
    "__version__",
    "open",
    "connect",
    "Database",
    "Global",
    "Member",
    "check_integrity",
    *_errors_all,
]
