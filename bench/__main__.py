"""``python -m bench [BENCHMARK ...] [--quick]``: run benchmarks, save bench/out/NAME.json, and
rewrite bench/RESULTS.md from every saved result. With no name, runs them all (~35 minutes)."""

from __future__ import annotations

import argparse
import sys
import time

from . import harness as h
from . import report

NAMES = ("startup", "why", "scale", "steady", "rotation", "footprint", "events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="BENCHMARK",
                        help=f"any of {', '.join(NAMES)}, or 'report' to only rewrite RESULTS.md "
                             "(default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="few rounds, for checking that the benchmarks work (not for figures)")
    parser.add_argument("--rounds", type=int, help="start-up rounds (default 25; quick 4)")
    parser.add_argument("--cycles", type=int, help="steady-state refresh cycles (default 1000)")
    parser.add_argument("--heap-cycles", type=int,
                        help="cycles of the Python-heap check, two windows (default 3000: fewer "
                             "cannot tell a slow leak from botocore's bounded caches filling)")
    parser.add_argument("--seed", type=int, help="seed for the shuffles (default: random)")
    args = parser.parse_args(argv)
    names = args.names or list(NAMES)
    unknown = set(names) - set(NAMES) - {"report"}
    if unknown:
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))} (known: {', '.join(NAMES)})")
    quick = args.quick
    machine = h.machine()
    for name in names:
        if name == "report":
            continue
        print(f"bench: {name} ...", flush=True)
        started = time.monotonic()
        if name == "startup":
            from . import startup

            result = startup.run(rounds=args.rounds or (4 if quick else 25), seed=args.seed)
        elif name == "why":
            from . import why

            result = why.run(rounds=4 if quick else 15, seed=args.seed)
        elif name == "scale":
            from . import scale

            result = scale.run(rounds=1 if quick else 5, seed=args.seed)
        elif name == "steady":
            from . import steady

            result = steady.run(cycles=args.cycles or (60 if quick else 1000),
                                heap_cycles=args.heap_cycles or (200 if quick else 3000))
        elif name == "footprint":
            from . import footprint

            result = footprint.run()
        elif name == "events":
            from . import events

            result = events.run(rotations=20, window=60.0 if quick else 90.0)
        else:
            from . import rotation

            result = rotation.run(samples_fast=3 if quick else 8, samples_default=1 if quick else 4,
                                  seed=args.seed)
        result["machine"] = machine
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        result["quick"] = quick
        path = report.save(name, result)
        print(f"bench: {name} done in {time.monotonic() - started:.0f} s -> "
              f"{path.relative_to(h.ROOT)}", flush=True)
    path = report.render()
    print(f"bench: wrote {path.relative_to(h.ROOT)}")
    for name, module in report.MODULES.items():
        saved = report.load(name)
        if saved is None:
            continue
        for target in module.targets(saved):
            print(f"  {'met    ' if target['met'] else 'NOT MET'}  {target['target']}: "
                  f"{target['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
