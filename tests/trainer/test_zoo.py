"""Every backbone x head, and every loss balancing method, under MultiWorkerMirroredStrategy with
two processes on localhost; each export, loaded fresh in another process, reproduces the model."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.small_project import DAYS, config_in
from trainer.launch import run_local_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HERE = Path(__file__).parent
REPO = str(HERE.parents[1])
BACKBONES = ["shared_bottom", "moe", "mmoe", "cgc", "ple", "single_task"]
HEADS = ["towers", "esmm"]
BALANCING = ["uncertainty", "gradnorm", "dwa", "pcgrad"]
SMALL = {
    "shared_bottom": {"units": [8]}, "single_task": {"units": [8]},
    "moe": {"num_experts": 2, "expert_units": [8]}, "mmoe": {"num_experts": 3, "expert_units": [8]},
    "cgc": {"shared_experts": 2, "task_experts": 1, "expert_units": [8]},
    "ple": {"levels": 2, "shared_experts": 1, "task_experts": 1, "expert_units": [8],
            "gate_units": [4]},
}
VARIANTS = [f"{b}-{h}" for b in BACKBONES for h in HEADS] + [f"mmoe-{m}" for m in BALANCING]


@pytest.fixture(scope="module")
def zoo(small_project, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    plan, exports = {}, {}
    for variant in VARIANTS:
        backbone, second = variant.split("-")
        model = {"backbone": backbone, backbone: SMALL[backbone], "tower_units": [4],
                 "dropout": 0.1, "batch_norm": backbone == "shared_bottom"}
        train = {}
        if second == "esmm":
            model.update(heads="esmm", esmm={"ctr_task": "click", "cvr_task": "conversion"})
        elif second in BALANCING:
            train["loss_balancing"] = second
        path = config_in(small_project, root / variant, train=train, tasks={
            "watch_time": {"label_transform": "log1p", "loss": "huber", "loss_weight": 0.5}
        }, **model)
        plan[variant] = str(path)
        exports[variant] = str(root / variant / "export" / "impressions")
    (root / "plan.json").write_text(json.dumps(plan))
    (root / "exports.json").write_text(json.dumps(exports))
    rows = root / "rows.jsonl"
    day3 = sorted((Path(small_project["root"]) / "work" / "logs" / f"dt={DAYS[2]}").glob("*.gz"))
    with gzip.open(day3[0], "rt") as f, rows.open("w") as out:
        for _, line in zip(range(64), f, strict=False):
            out.write(line)
    out_dir = root / "out"
    out_dir.mkdir()
    status = run_local_workers(
        [str(HERE / "zoo_main.py"), str(root / "plan.json"), str(out_dir), str(rows)], 2,
        extra_env={"PYTHONPATH": REPO},
    )
    assert status == 0, f"a zoo worker failed with exit code {status}"
    subprocess.run(
        [sys.executable, str(HERE / "load_exports_main.py"), str(root / "exports.json"),
         str(out_dir), str(rows)],
        check=True, cwd=REPO, env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"},
    )
    return out_dir


@pytest.mark.parametrize("variant", VARIANTS)
def test_trains_in_a_two_worker_cluster_and_the_export_reproduces_it(zoo, variant):
    chief, other = (dict(np.load(zoo / f"{variant}-w{i}.npz")) for i in range(2))
    served = dict(np.load(zoo / f"{variant}-served.npz"))
    assert int(chief["replicas"]) == 2 and int(chief["global_step"]) > 0
    np.testing.assert_array_equal(chief["checksums"], other["checksums"])  # workers agree
    expected = {k[len("out_"):] for k in chief if k.startswith("out_")}
    wanted = {"click", "conversion", "watch_time"} | ({"ctcvr"} if "esmm" in variant else set())
    assert set(served) == expected == wanted
    for name in expected:
        np.testing.assert_allclose(served[name], chief[f"out_{name}"], rtol=1e-5, atol=1e-5)
    assert np.all(served["watch_time"] >= -1)  # expm1 of the log1p unit: seconds again
    if "esmm" in variant:
        np.testing.assert_allclose(served["ctcvr"], served["click"] * served["conversion"],
                                   rtol=1e-5)
