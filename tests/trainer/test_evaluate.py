"""`multitower evaluate`: per-task metrics and gate diagnostics from the latest checkpoint."""

import json

import numpy as np
import pytest

from tests.small_project import DAYS, config_in
from trainer.evaluate import evaluate_day, format_report, gate_summary


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


@pytest.mark.integration
def test_evaluate_reports_tasks_esmm_and_gates(small_project, tmp_path):
    from multitower.config import load_config
    from trainer.train import train_day

    config = load_config(config_in(
        small_project, tmp_path, backbone="ple", heads="esmm",
        esmm={"ctr_task": "click", "cvr_task": "conversion"},
        ple={"levels": 2, "shared_experts": 1, "task_experts": 1, "expert_units": [8]},
    ))
    train_day(config, DAYS[0])
    report = evaluate_day(config, DAYS[1])
    written = small_project["manifests"][1]["rows"]["written"]
    assert report["rows"] == written
    tasks = report["tasks"]
    assert set(tasks) == {"click", "conversion", "watch_time", "ctcvr"}
    for name in ("click", "conversion", "ctcvr"):
        assert 0.0 <= tasks[name]["auc"] <= 1.0
    assert 0.0 <= tasks["conversion"]["auc_clicked"] <= 1.0
    assert tasks["click"]["calibration"] > 0 and tasks["watch_time"]["rmse"] > 0
    gates = report["gates"]
    assert set(gates) == {"level0/click", "level0/conversion", "level0/watch_time",
                          "level0/shared", "level1/click", "level1/conversion",
                          "level1/watch_time"}
    assert sum(gates["level0/shared"]["mean_weight_per_expert"]) == pytest.approx(1.0, abs=1e-3)
    on_disk = json.loads((tmp_path / "model" / "eval" / f"dt={DAYS[1]}.json").read_text())
    assert on_disk["tasks"] == json.loads(json.dumps(tasks))
    assert "gate level1/click" in format_report(report)
