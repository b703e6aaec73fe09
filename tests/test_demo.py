"""The local end-to-end run, through the real `multitower` command, on a small generated day."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_every_stage_and_the_model_learns(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "commands.cli", "demo", "--workdir", str(tmp_path),
         "--rows-per-day", "8000", "--workers", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "8000/8000/0" in out  # rows read/written/rejected for a clean generated day
    aucs = {m[0]: float(m[1]) for m in re.findall(r"(click|conversion)\s+AUC\s+([0-9.]+)", out)}
    assert set(aucs) == {"click", "conversion"}
    assert aucs["click"] > 0.6, out  # well above chance on the unseen day, even on small data
    per_user = dict(re.findall(r"(click|conversion)\s+AUC\s+[0-9.]+\s+user_id AUC ([0-9.]+)", out))
    assert set(per_user) == {"click", "conversion"}  # evaluate.group_by of the example
    assert all(0.0 < float(v) < 1.0 for v in per_user.values()), out
    assert re.search(r"watch_time\s+RMSE\s+[0-9.]+", out)

    work = tmp_path / "work"
    assert sorted(p.name for p in (work / "export" / "impressions").iterdir()) == ["1", "2"]
    state = json.loads((work / "model" / "state.json").read_text())
    assert [d["date"] for d in state["days"]] == ["2026-01-01", "2026-01-02"]
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        manifest = json.loads((work / "tfrecords" / f"dt={day}" / "_MANIFEST.json").read_text())
        assert manifest["rows"]["written"] == 8000
