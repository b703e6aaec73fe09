"""Loads SavedModels fresh (no multitower model code) and scores raw rows.

Usage: python load_exports_main.py PLAN_JSON OUT_DIR ROWS_JSONL
For each variant in PLAN_JSON ({name: export model folder}), loads the newest version with
`serving.predict.Predictor` and writes OUT_DIR/<name>-served.npz.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

from serving.predict import Predictor, read_rows


def main() -> None:
    plan_path, out_dir, rows_path = sys.argv[1:4]
    rows = [(f"{rows_path}:{n}", row) for n, row in read_rows(rows_path)]
    for name, model_base in json.loads(Path(plan_path).read_text()).items():
        scores = next(Predictor(model_base).predict(rows, batch_size=len(rows)))
        np.savez(os.path.join(out_dir, f"{name}-served.npz"), **scores)


if __name__ == "__main__":
    main()
