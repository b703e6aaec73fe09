"""`multitower evaluate`: per-task metrics and gate diagnostics from the latest checkpoint."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.small_project import DAYS, config_in
from trainer.evaluate import gate_summary


def test_gate_summary_flags_a_collapsed_gate():
    rng = np.random.default_rng(0)
    healthy = rng.dirichlet([1.0, 1.0, 1.0], size=200)
    collapsed = np.tile([0.98, 0.01, 0.01], (200, 1))
    collapsed[:20] = [0.4, 0.3, 0.3]  # 90% of examples dominated by expert 0
    summary = gate_summary({"click": healthy, "conversion": collapsed})
    assert not summary["click"]["collapsed"]
    assert summary["conversion"]["collapsed"]
    assert summary["conversion"]["share_dominated_by_one_expert"] == pytest.approx(0.9)
    assert summary["conversion"]["mean_weight_per_expert"][0] == pytest.approx(0.922, abs=1e-3)


def _day_user_ids(small_project: dict, date: str) -> set[str]:
    rows = []
    for path in sorted((Path(small_project["root"]) / "work" / "logs" / f"dt={date}").glob("*")):
        with gzip.open(path, "rt") as lines:
            rows += [json.loads(line) for line in lines if line.strip()]
    return {r["user_id"] for r in rows}


@pytest.mark.integration
def test_evaluate_reports_tasks_esmm_gates_and_group_auc_and_draws_them(small_project, tmp_path):
    from matplotlib.image import imread

    from commands.cli import main
    from multitower.config import load_config
    from trainer.pictures import draw_calibration, draw_gates
    from trainer.train import train_day

    path = config_in(
        small_project, tmp_path, backbone="ple", heads="esmm",
        esmm={"ctr_task": "click", "cvr_task": "conversion"},
        ple={"levels": 2, "shared_experts": 1, "task_experts": 1, "expert_units": [8]},
        evaluate={"group_by": "user_id", "calibration_bins": 5},
    )
    config = load_config(path)
    train_day(config, DAYS[0])
    pictures = tmp_path / "pictures"
    result = CliRunner().invoke(main, ["evaluate", "--config", str(path), "--date", DAYS[1],
                                       "--png", str(pictures)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "model" / "eval" / f"dt={DAYS[1]}.json").read_text())
    written = small_project["manifests"][1]["rows"]["written"]
    assert report["rows"] == written and report["group_by"] == "user_id"
    tasks = report["tasks"]
    assert set(tasks) == {"click", "conversion", "watch_time", "ctcvr"}
    for name in ("click", "conversion", "ctcvr"):
        assert 0.0 <= tasks[name]["auc"] <= 1.0
        assert 0.0 <= tasks[name]["group_auc"] <= 1.0
        counted = tasks[name]["group_auc_counted"]
        # grouped by the day's users; only users with both classes count
        assert counted["groups_total"] == len(_day_user_ids(small_project, DAYS[1]))
        assert 0 < counted["groups"] < counted["groups_total"]
        assert counted["rows"] < tasks[name]["rows"]
        bins = tasks[name]["calibration_curve"]
        assert sum(b["rows"] for b in bins) == tasks[name]["rows"]
        mean = sum(b["rows"] * b["mean_prediction"] for b in bins) / tasks[name]["rows"]
        positives = sum(b["rows"] * b["positive_rate"] for b in bins) / tasks[name]["rows"]
        assert mean / positives == pytest.approx(tasks[name]["calibration"], rel=1e-6)
    assert "group_auc" not in tasks["watch_time"]
    assert 0.0 <= tasks["conversion"]["auc_clicked"] <= 1.0
    assert tasks["click"]["calibration"] > 0 and tasks["watch_time"]["rmse"] > 0
    gates = report["gates"]
    assert set(gates) == {"level0/click", "level0/conversion", "level0/watch_time",
                          "level0/shared", "level1/click", "level1/conversion",
                          "level1/watch_time"}
    assert gates["level1/click"]["experts"] == ["click/e0", "shared/e0"]
    assert gates["level0/shared"]["experts"] == ["click/e0", "conversion/e0", "watch_time/e0",
                                                 "shared/e0"]
    assert sum(gates["level0/shared"]["mean_weight_per_expert"]) == pytest.approx(1.0, abs=1e-3)
    assert "gate level1/click" in result.output
    assert "group_auc" in result.output and "groups have both classes" in result.output

    # The pictures: valid PNGs, drawn from the report's own numbers.
    assert f"drew {pictures / 'calibration.png'}" in result.output
    for name in ("calibration.png", "gates.png"):
        data = (pictures / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = imread(str(pictures / name)).shape
        assert width > 300 and height > 200
    report["path"] = "unused"
    figure = draw_gates(report, str(tmp_path / "again.png"))
    levels = {ax.get_title(): (ax.images[0].get_array(),
                               [t.get_text() for t in ax.get_xticklabels()])
              for ax in figure.axes if ax.images}
    assert set(levels) == {"level0", "level1"}
    assert levels["level1"][1] == ["click/e0", "conversion/e0", "watch_time/e0", "shared/e0"]
    for gate, values in gates.items():
        level, _, task = gate.partition("/")
        row = ["click", "conversion", "watch_time", "shared"].index(task)
        drawn, columns = levels[level][0][row], levels[level][1]
        for expert, weight in zip(values["experts"], values["mean_weight_per_expert"],
                                  strict=True):
            assert drawn[columns.index(expert)] == pytest.approx(weight)
        assert int(np.ma.count(drawn)) == len(values["experts"])  # unseen experts blank
    figure = draw_calibration(report, str(tmp_path / "again.png"))
    curves = {ax.get_title().split(":")[0]: ax.lines[1].get_xydata() for ax in figure.axes
              if ax.lines}
    assert set(curves) == {"click", "conversion", "ctcvr"}
    for name, xy in curves.items():
        bins = tasks[name]["calibration_curve"]
        assert xy.tolist() == [[b["mean_prediction"], b["positive_rate"]] for b in bins]
