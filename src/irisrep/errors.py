"""The error tree: one base, a few typed leaves, the IRIS error word on each.

Rules: bad input raises one of these and changes nothing; `OSError` from the
operating system stays `OSError` (except where a failed fsync makes a member stop,
which is `DurabilityError`); bugs are never caught and turned into these.
"""

from __future__ import annotations


class IrisrepError(Exception):
    """Base of every error irisrep raises on purpose."""

    iris_word = "<ERROR>"


class UndefinedError(IrisrepError, KeyError):
    """The node has no value (`<UNDEFINED>`)."""

    iris_word = "<UNDEFINED>"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else self.iris_word


class SubscriptError(IrisrepError, ValueError):
    """A bad subscript or global name, or a reference over 511 encoded bytes (`<SUBSCRIPT>`)."""

    iris_word = "<SUBSCRIPT>"


class MaxStringError(IrisrepError, ValueError):
    """A value longer than the IRIS string limit (`<MAXSTRING>`)."""

    iris_word = "<MAXSTRING>"


class IllegalValueError(IrisrepError, ValueError):
    """A value irisrep cannot store: NaN, an infinity, or a type other than str/int/float/bytes."""

    iris_word = "<ILLEGAL VALUE>"


class ProtectError(IrisrepError):
    """A write to a read-only (mirrored, non-primary) database (`<PROTECT>`)."""

    iris_word = "<PROTECT>"


class NotPrimaryError(ProtectError):
    """This member is not the primary; `primary` names the one that is, if known (the
    client address). A ProtectError too: code that catches <PROTECT> still does."""

    iris_word = "<PROTECT>"

    def __init__(self, message: str, primary: str | None = None) -> None:
        super().__init__(message)
        self.primary = primary


class FencedError(IrisrepError):
    """A frame or request from an older epoch."""


class LockTimeoutError(IrisrepError):
    """A lock was not granted within its timeout."""


class LockTableFullError(IrisrepError):
    """The lock table holds LOCKS_MAX locks; a new one is refused (`<LOCKTABLEFULL>`)."""

    iris_word = "<LOCKTABLEFULL>"


class TransactionError(IrisrepError):
    """Transaction misuse: commit with no transaction, rollback below level 0, too deep."""


class FailoverIneligibleError(TransactionError):
    """A promotion (or a start as a failover member or DR async) refused: this copy of
    the mirrored database was read-write on a reporting async, so it may hold local
    changes the mirror never had; it is not eligible to fail over, for good."""


class CorruptError(IrisrepError):
    """Stored bytes fail verification. Names the file, the place, expected and found."""

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        offset: int = -1,
        expected: object = None,
        found: object = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset
        self.expected = expected
        self.found = found


class BlockCorruptError(CorruptError):
    """A database block failed its checksum or does not identify itself as expected."""

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        block: int = -1,
        expected: object = None,
        found: object = None,
    ) -> None:
        from .constants import BLOCK_SIZE

        super().__init__(
            message, path=path, offset=block * BLOCK_SIZE, expected=expected, found=found
        )
        self.block = block


class WIJCorruptError(CorruptError):
    """The write image journal fails verification (header slots, directory, an entry).

    Also names the directory `entry`, its `block` and `db_id` when there is one (-1)."""

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        offset: int = -1,
        expected: object = None,
        found: object = None,
        entry: int = -1,
        block: int = -1,
        db_id: int = -1,
    ) -> None:
        super().__init__(message, path=path, offset=offset, expected=expected, found=found)
        self.entry = entry
        self.block = block
        self.db_id = db_id


class WIJRecoveryPendingError(IrisrepError):
    """A cycle was asked for while the WIJ holds an active set: recover() first."""


class JournalCorruptError(CorruptError):
    """A journal frame failed verification in a place that is not a torn tail."""


class DurabilityError(IrisrepError):
    """A write could not be made durable (fsync failed): the member stops taking writes."""


class WireError(IrisrepError):
    """Bad input from the network; `reason` (one of WIRE_ERROR_REASONS) says why.

    The connection it came from cannot be trusted to be in step any more: close it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"wire frame: {reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        return (type(self), (self.reason, self.detail))


class HandshakeError(WireError):
    """The handshake failed: `reason` is one of HANDSHAKE_REASONS (or a WireError's
    reason when a frame in it was malformed)."""

    def __init__(self, reason: str, detail: str) -> None:
        IrisrepError.__init__(self, f"wire handshake: {reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BackupError(IrisrepError):
    """A backup or restore refused what it was asked (bad input, a target in use, a
    journal that does not continue the backup's stream): nothing was changed."""


class BackupChainError(BackupError):
    """The backups given to a restore are not one chain in order: `missing` names the
    backup file that should be there (its name as its successor records it), if any."""

    def __init__(self, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


class BackupCorruptError(CorruptError, BackupError):
    """A backup file fails verification: names the file, the block (-1 when the fault
    is outside the block entries) and the byte offset of the entry or field."""

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        offset: int = -1,
        block: int = -1,
        expected: object = None,
        found: object = None,
    ) -> None:
        super().__init__(message, path=path, offset=offset, expected=expected, found=found)
        self.block = block


class JournalPurgeError(IrisrepError):
    """A journal purge refused what it was asked (a bad limit, or files that are not
    the oldest of the chain): nothing was removed."""


class DatabaseNotFoundError(IrisrepError, KeyError):
    """No database of that name here (IRIS `<NAMESPACE>`), or a journal record names a
    database id this instance does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(IrisrepError, ValueError):
    """A bad setting: names the key and says what is allowed."""


class ClosedError(IrisrepError):
    """Use of a database or global after `close()`."""


class DeployError(IrisrepError):
    """A deployment command (`irisrep up`, `ps`, `stop`, ...) could not do what was
    asked: the message says why (no deployment here, an unknown member, an agent
    that does not answer)."""


__all__ = [
    "IrisrepError",
    "UndefinedError",
    "SubscriptError",
    "MaxStringError",
    "IllegalValueError",
    "ProtectError",
    "NotPrimaryError",
    "FencedError",
    "LockTimeoutError",
    "LockTableFullError",
    "TransactionError",
    "FailoverIneligibleError",
    "CorruptError",
    "BlockCorruptError",
    "WIJCorruptError",
    "WIJRecoveryPendingError",
    "JournalCorruptError",
    "DurabilityError",
    "WireError",
    "HandshakeError",
    "BackupError",
    "BackupChainError",
    "BackupCorruptError",
    "JournalPurgeError",
    "ConfigError",
    "ClosedError",
    "DeployError",
    "DatabaseNotFoundError",
]
