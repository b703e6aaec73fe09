"""Local workers share the machine's cores: each gets its share of TensorFlow's thread pools."""

import json

from trainer.launch import run_local_workers, thread_budget

POOLS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def test_the_cores_are_split_over_the_workers_and_a_set_variable_is_kept(monkeypatch):
    for name in POOLS:
        monkeypatch.delenv(name, raising=False)
    assert thread_budget(1, cores=8) == {}
    assert thread_budget(2, cores=8) == {name: "4" for name in POOLS}
    assert thread_budget(4, cores=2) == {name: "1" for name in POOLS}  # at least one
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "3")
    assert thread_budget(2, cores=2) == {"TF_NUM_INTRAOP_THREADS": "1"}


def test_every_local_worker_process_gets_its_share(monkeypatch, tmp_path):
    for name in POOLS:
        monkeypatch.delenv(name, raising=False)
    program = ("import json, os, sys; "
               "index = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
               f"open(sys.argv[1] + f'/{{index}}.json', 'w').write(json.dumps("
               f"{{k: os.environ.get(k) for k in {POOLS!r}}}))")
    assert run_local_workers(["-c", program, str(tmp_path)], 2) == 0
    share = thread_budget(2)
    for index in range(2):
        assert json.loads((tmp_path / f"{index}.json").read_text()) == share
