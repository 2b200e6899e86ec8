"""Command line: ``python -m captum_gradflow demo [--out DIR] [--quick]``.

Only parses arguments; the demo itself lives in :mod:`captum_gradflow.demo`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit status.

    Examples::

        $ python -m captum_gradflow demo --quick --out demo_out
    """
    parser = argparse.ArgumentParser(prog="python -m captum_gradflow",
                                     description="captum_gradflow command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run both seed papers' experiments and write report.md, results.json and figures",
        description="Train the small CNN on synthetic lesions with and without the alignment "
        "regularizer, fit GAD on real digits, and write report.md, results.json, tables and "
        "figures. Full mode takes a few minutes on 2 CPU cores; --quick about one.",
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="small sizes: about a minute on 2 CPU cores")
    demo.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)

    from captum_gradflow.demo import DemoConfig, run_demo  # heavy imports after parsing

    config = DemoConfig.quick(seed=args.seed) if args.quick else DemoConfig(seed=args.seed)
    results = run_demo(args.out, quick=args.quick, config=config, progress=not args.no_progress)
    verdict = {True: "held", False: "did NOT hold", None: "undecided"}
    print(f"\nWrote {args.out}/report.md, results.json and {len(results['figures'])} figures.")
    for claim in results["claims"]:
        print(f"  [{verdict[claim['held']]}] {claim['claim']}: {claim['evidence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
