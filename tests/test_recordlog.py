"""The commit path's encoded record logs (`_core.CommitLog`, `_core.RecordList`).

Records are encoded as they are logged; what comes out must be exactly what
`encode_records` makes of the same records, in the same order, cut into chunks that
each fit one journal frame, and a transaction's list must give back the records
(decoded) for TROLLBACK.
"""

from __future__ import annotations

import pytest

from irisrep import _core
from irisrep.constants import JOURNAL_GROUP_COMMIT_RECORDS_MAX
from irisrep.journalcodec import Record


def _rec(i: int, before: bytes = b"") -> Record:
    return Record(1, 1 if before else 0, 7, 3, b"k%06d" % i, b"\x01v%d" % i, before)


class _Log(_core.CommitLog):
    """What Committer adds that the base calls: the failure record and its error."""

    def _fail(self, exc):
        if self._failure is None:
            self._failure = exc

    def _error(self):
        return RuntimeError(f"stopped: {self._failure}")


def test_commit_log_payloads_match_encode_records():
    log = _Log()
    recs = [_rec(i, b"\x01old" if i % 3 else b"") for i in range(1000)]
    assert log.log(recs[:10]) == 10
    for r in recs[10:]:
        log.log1(r)
    assert log.pending_records == 1000
    parts, n = log.take()
    assert n == 1000 and sum(c for _p, c in parts) == 1000
    assert b"".join(p for p, _c in parts) == _core.encode_records(recs)
    assert log.take() == ([], 0)
    assert log._logged == 1000


def test_commit_log_chunks_fit_a_frame():
    log = _Log()
    n = JOURNAL_GROUP_COMMIT_RECORDS_MAX + 5
    recs = [_rec(i) for i in range(n)]
    log.log(recs)
    parts, total = log.take()
    assert total == n
    assert [c for _p, c in parts] == [JOURNAL_GROUP_COMMIT_RECORDS_MAX, 5]
    assert parts[0][0] == _core.encode_records(recs[:JOURNAL_GROUP_COMMIT_RECORDS_MAX])
    assert parts[1][0] == _core.encode_records(recs[JOURNAL_GROUP_COMMIT_RECORDS_MAX:])


def test_commit_log_bad_record_is_fatal_and_logs_nothing():
    log = _Log()
    log.log([_rec(0)])
    with pytest.raises(ValueError):
        log.log([_rec(1), (99, 0, 0, 0, b"", b"", b"")])  # unknown type
    assert isinstance(log._failure, ValueError)
    with pytest.raises(RuntimeError, match="stopped"):
        log.log([_rec(2)])
    parts, n = log.take()
    assert n == 1  # the batch with the bad record went in whole or not at all


def test_record_list_round_trip_and_tail_delete():
    rl = _core.RecordList()
    recs = [_rec(i, b"\x01b" * (i % 4)) for i in range(50)]
    rl.extend(recs[:20])
    for r in recs[20:]:
        rl.append(r)
    assert len(rl) == 50
    assert rl[:] == recs and list(rl) == recs and list(reversed(rl)) == recs[::-1]
    assert rl[10:] == recs[10:] and rl[10:12] == recs[10:12] and rl[60:] == []
    assert all(type(r) is Record for r in rl[45:])
    del rl[30:]
    assert len(rl) == 30 and rl[:] == recs[:30]
    del rl[5:10]
    assert rl[:] == recs[:5] + recs[10:30]
    rl.append(recs[49])
    assert rl[-1:] == [recs[49]]
    with pytest.raises(TypeError):
        rl[0]
    assert _core.RecordList(recs[:3])[:] == recs[:3]
