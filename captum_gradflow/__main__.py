"""Command line: ``python -m captum_gradflow demo [--out DIR] [--quick]`` and
``python -m captum_gradflow evaluate RECIPE.py --out DIR [...]`` (also under ``torchrun``).

Only parses arguments; the demo lives in :mod:`captum_gradflow.demo`, the evaluation in
:mod:`captum_gradflow.evaluate`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit status.

    Examples::

        $ python -m captum_gradflow demo --quick --out demo_out
        $ torchrun --nproc_per_node=2 -m captum_gradflow evaluate recipe.py --out eval_out
    """
    parser = argparse.ArgumentParser(prog="python -m captum_gradflow",
                                     description="captum_gradflow command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run both seed papers' experiments and write report.md, results.json and figures",
        description="Train the small CNN on synthetic lesions with and without the alignment "
        "regularizer, fit GAD on real digits, and write report.md, results.json, tables and "
        "figures. Full mode takes about 85 s on a quiet 2-core machine; --quick well under a minute.",
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="small sizes: well under a minute on 2 CPU cores")
    demo.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_evaluate(sub)
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return _evaluate(args)

    from captum_gradflow.demo import DemoConfig, run_demo  # heavy imports after parsing

    config = DemoConfig.quick(seed=args.seed) if args.quick else DemoConfig(seed=args.seed)
    results = run_demo(args.out, quick=args.quick, config=config, progress=not args.no_progress)
    verdict = {True: "held", False: "did NOT hold", None: "undecided"}
    print(f"\nWrote {args.out}/report.md, results.json and {len(results['figures'])} figures.")
    for claim in results["claims"]:
        print(f"  [{verdict[claim['held']]}] {claim['claim']}: {claim['evidence']}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="evaluate a recipe's model and features over its whole data set",
        description="Run RECIPE.py (defining model(), dataset(), features(); optionally target(y), "
        "attribution(model), gad(model)) over every dataset index and write examples.parquet, "
        "summary.json and summary.md to --out. Unchanged under torchrun --nproc_per_node=N.",
    )
    ev.add_argument("recipe", help="the recipe file (a Python file)")
    ev.add_argument("--out", required=True, help="output folder (new, empty, or one to --resume)")
    ev.add_argument("--batch-size", type=int, default=16, help="examples per batch (default: 16)")
    ev.add_argument("--n-noise", type=int, default=32, help="noise features M (default: 32)")
    ev.add_argument("--flow", action="store_true", help="also measure the flow alignment F")
    ev.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _evaluate(args: argparse.Namespace) -> int:
    import os

    import torch

    from captum_gradflow.evaluate.recipe import load_recipe
    from captum_gradflow.evaluate.runner import Settings, run_evaluation

    settings = Settings(batch_size=args.batch_size, n_noise=args.n_noise, flow=args.flow,
                        resume=args.resume, progress=not args.no_progress)
    recipe = load_recipe(args.recipe)
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        recipe.model.to(device)
    result = run_evaluation(recipe, args.out, settings, device=device)
    if result is not None:
        print(f"\nWrote {args.out}/examples.parquet ({len(result[0])} rows), summary.json, summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
