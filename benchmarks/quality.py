"""Prints model-quality figures: MMoE's synthetic tasks, and ESMM against a clicked-rows CVR tower.

    python benchmarks/quality.py [--parts synthetic esmm] [--workdir DIR] [--png DIR]
                                 [options of each part: --help]

(a) `quality_synthetic.py`: the synthetic two-task regression of Ma et al. (KDD 2018, section 4),
    shared-bottom, MoE, MMoE and PLE as the tasks' correlation falls.
(b) `quality_esmm.py`: ESMM against a CVR tower trained on clicked rows only, on generated
    impression logs whose true click and conversion probabilities are known.

Figures are printed, never asserted, and drawn as PNG files. Progress goes to stderr, the tables
to stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import quality_esmm
import quality_synthetic


def main() -> None:
    """Parses the command line and runs the asked parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["synthetic", "esmm"],
                        default=["synthetic", "esmm"])
    parser.add_argument("--workdir", help="keep the generated files here (default: a temporary "
                        "folder, deleted at the end)")
    parser.add_argument("--png", default="quality-figures",
                        help="folder the figures are written to (default: %(default)s)")
    quality_synthetic.add_arguments(parser)
    quality_esmm.add_arguments(parser)
    args = parser.parse_args()
    for p in args.correlations:
        if not -1.0 <= p <= 1.0:
            parser.error(f"--correlations must be in [-1, 1], got {p}")

    started = time.perf_counter()
    print(f"multitower quality benchmark — parts {', '.join(args.parts)}; "
          f"{os.cpu_count()} CPU core(s)")
    Path(args.png).mkdir(parents=True, exist_ok=True)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="multitower-quality-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if "synthetic" in args.parts:
            quality_synthetic.run_synthetic(args, root)
        if "esmm" in args.parts:
            quality_esmm.run_esmm(args, root)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
