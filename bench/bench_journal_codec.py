"""Journal codec throughput: the Cython `_core` beside the pure-Python `journalcodec`.

Issue 4 (a): records/s encoded and checksummed, raw and with zstd, for 64-byte SET
records (key 20, value 30, before 14 bytes) in frames of 256 records, on one core.
One "encode" is encode_records + encode_frame (xxh3 of header and payload included);
one "decode" is parse_frame (checksum, zstd) + decode_records. The records differ from
one another (a counter in key and value, random bytes in the before-image), so zstd
sees realistic, not degenerate, input. Figures are the best of --repeat runs.

    python bench/bench_journal_codec.py [--frames 2000] [--repeat 5] [--json out.json]
                                        [--check-goals]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time

from irisrep import _core, journalcodec
from irisrep.journalcodec import SET, Record

GOAL_RECORDS_PER_S = 1_000_000
RECORDS_PER_FRAME = 256


def make_frames(n_frames: int, seed: int = 4) -> list[list[Record]]:
    """n_frames lists of 256 SET records of 20 + 30 + 14 payload bytes."""
    rnd = random.Random(seed)
    frames = []
    i = 0
    for _ in range(n_frames):
        recs = []
        for _ in range(RECORDS_PER_FRAME):
            key = b"acct\x00\x30customer\x00\x22" + i.to_bytes(4, "big")  # 20 bytes
            value = b"\x01balance=" + str(i * 7919 % 10**9).zfill(21).encode()  # 30 bytes
            before = rnd.randbytes(14)
            recs.append(Record(SET, 1, 1, 1000 + i // 64, key, value, before))
            i += 1
        frames.append(recs)
    assert len(frames[0][0].key) + len(frames[0][0].value) + len(frames[0][0].before) == 64
    return frames


def best_rate(fn, repeat: int, n_records: int) -> float:
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = max(best, n_records / (time.perf_counter() - t0))
    return best


def run(codec, frames, repeat: int) -> dict[str, float]:
    n = len(frames) * RECORDS_PER_FRAME
    out: dict[str, float] = {}
    encoded: dict[str, list[bytes]] = {}
    for label, compress in (("raw", False), ("zstd", True)):

        def encode(compress=compress, label=label):
            pos = 0
            frames_out = []
            for recs in frames:
                payload = codec.encode_records(recs)
                frame = codec.encode_frame(
                    payload, len(recs), epoch=1, position=pos, compress=compress
                )
                frames_out.append(frame)
                pos += len(frame)
            encoded[label] = frames_out

        out[f"encode+checksum {label}"] = best_rate(encode, repeat, n)
    for label in ("raw", "zstd"):
        stream = b"".join(encoded[label])

        def decode(stream=stream):
            off = 0
            end = len(stream)
            while off < end:
                header, raw, nxt = codec.parse_frame(stream, off, off)
                codec.decode_records(raw, header.count)
                off = nxt

        out[f"decode {label}"] = best_rate(decode, repeat, n)
    sizes = {label: sum(map(len, fs)) for label, fs in encoded.items()}
    out["zstd ratio"] = sizes["raw"] / sizes["zstd"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000, help="frames of 256 records (Cython)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", dest="json_path", help="write the figures here")
    ap.add_argument(
        "--check-goals",
        action="store_true",
        help="exit 1 when a goal is not met (off by default: a loaded machine is not a defect)",
    )
    args = ap.parse_args(argv)
    frames = make_frames(args.frames)
    results = {
        "cython": run(_core, frames, args.repeat),
        # The reference is far slower: a tenth of the frames gives a stable figure.
        "python": run(journalcodec, frames[: max(args.frames // 10, 10)], args.repeat),
    }
    print(
        f"journal codec benchmark: python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.frames:,} frames x {RECORDS_PER_FRAME} SET records "
        f"of 64 bytes (reference: a tenth), best of {args.repeat}"
    )
    print(f"{'records/s':<26}{'cython':>14}{'python':>14}{'ratio':>9}")
    for name in results["cython"]:
        cy, py = results["cython"][name], results["python"][name]
        if name == "zstd ratio":
            print(f"{'zstd size ratio':<26}{cy:>13.2f}x{py:>13.2f}x")
            continue
        print(f"{name:<26}{cy:>14,.0f}{py:>14,.0f}{cy / py:>8.1f}x")
    goals = {
        name: results["cython"][name] >= GOAL_RECORDS_PER_S
        for name in ("encode+checksum raw", "encode+checksum zstd", "decode raw")
    }
    for name, ok in goals.items():
        print(
            f"goal {name} >= {GOAL_RECORDS_PER_S:,} records/s: {'met' if ok else 'NOT MET'} "
            f"({results['cython'][name]:,.0f})"
        )
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "frames": args.frames,
                    "records_per_frame": RECORDS_PER_FRAME,
                    "record_bytes": 64,
                    "results": results,
                    "goal_records_per_s": GOAL_RECORDS_PER_S,
                    "goals_met": goals,
                },
                f,
                indent=2,
            )
    return 1 if args.check_goals and not all(goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
