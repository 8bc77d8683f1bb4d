"""Key and value codec throughput: the Cython `_core` beside the pure-Python reference.

Each case calls one codec function in a plain loop on one core and reports calls per
second (best of --repeat runs, so a noisy neighbour does not decide the figure). The
goal checked at the end is the spec's: >= 2,000,000 `encode_key(prefix, ("key", 12345))`
calls/s, and the same for a 3-subscript key.

    python bench/bench_keycodec.py [--n 1000000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from irisrep import _core, keycodec

GOAL_ENCODES_PER_S = 2_000_000


def rate(fn, args_list, repeat):
    """Best calls/s of fn(*args) over args_list, out of `repeat` runs."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for args in args_list:
            fn(*args)
        best = max(best, len(args_list) / (time.perf_counter() - t0))
    return best


def cases(codec, n):
    """(name, function, argument tuples): the same inputs for every codec."""
    prefix = codec.encode_name("^acct")
    two = [(prefix, ("key", 12345))] * n
    varied = [(prefix, ("key", i)) for i in range(n)]
    three = [(prefix, ("customer", i, "balance")) for i in range(n)]
    mixed = [(prefix, (i * 0.25, -i, "name" + str(i % 97))) for i in range(n)]
    keys2 = [(k, len(prefix)) for k in {codec.encode_key(*a) for a in varied[: min(n, 100_000)]}]
    keys3 = [(codec.encode_key(*a), len(prefix)) for a in three[: min(n, 100_000)]]
    values = [("v" * 16,), (12345,), (1.5,), (b"\x00" * 16,)] * (n // 4)
    encoded_values = [(codec.encode_value(v[0]),) for v in values[:4]] * (n // 4)
    return [
        ("encode_key ('key', 12345)", codec.encode_key, two),
        ("encode_key ('key', i)", codec.encode_key, varied),
        ("encode_key ('customer', i, 'balance')", codec.encode_key, three),
        ("encode_key (i/4, -i, 'name..')", codec.encode_key, mixed),
        ("decode_subscripts 2 subs", codec.decode_subscripts, keys2),
        ("decode_subscripts 3 subs", codec.decode_subscripts, keys3),
        ("encode_value str/int/float/bytes", codec.encode_value, values),
        ("decode_value str/int/float/bytes", codec.decode_value, encoded_values),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="calls per case for the Cython codec")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", dest="json_path", help="write the figures here")
    ap.add_argument(
        "--check-goals",
        action="store_true",
        help="exit 1 when a goal is missed (off by default: a loaded machine is not a defect)",
    )
    args = ap.parse_args(argv)
    # The reference is ~20-50x slower: a tenth of the calls still gives a stable figure.
    runs = {"cython": (_core, args.n), "python": (keycodec, max(args.n // 10, 1000))}
    results = {}
    for label, (codec, n) in runs.items():
        results[label] = {
            name: rate(fn, arglist, args.repeat) for name, fn, arglist in cases(codec, n)
        }
    print(
        f"key codec benchmark: python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, n={args.n:,} (reference n/10), best of {args.repeat}"
    )
    print(f"{'calls/s':<40}{'cython':>14}{'python':>14}{'ratio':>9}")
    for name in results["cython"]:
        cy, py = results["cython"][name], results["python"][name]
        print(f"{name:<40}{cy:>14,.0f}{py:>14,.0f}{cy / py:>8.1f}x")
    goals = {
        "encode_key 2 subs >= 2,000,000/s": results["cython"]["encode_key ('key', 12345)"]
        >= GOAL_ENCODES_PER_S,
        "encode_key 3 subs >= 2,000,000/s": results["cython"][
            "encode_key ('customer', i, 'balance')"
        ]
        >= GOAL_ENCODES_PER_S,
    }
    for goal, met in goals.items():
        print(f"{'met ' if met else 'MISSED'} {goal}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "python_version": platform.python_version(),
                    "machine": platform.machine(),
                    "n": args.n,
                    "repeat": args.repeat,
                    "calls_per_s": results,
                    "goals": goals,
                },
                f,
                indent=2,
            )
    return 1 if args.check_goals and not all(goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
