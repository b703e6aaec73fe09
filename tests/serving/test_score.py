"""`multitower score`: a preprocessed day through an exported version (RunInference) to Parquet.

Two Beam runs are shared by the module: `run_score` with the default (newest) version, then the
real command line with `--model <base>/1`, three shards and a multi-process DirectRunner into the
same folder (a rerun of the same day, which replaces it). Every score is compared with the
in-process `predict_examples` result of the same version, row by row through the origins.
A third run fails its row count on purpose and must publish nothing.
"""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from commands.cli import main
from multitower.config import load_config
from multitower.manifest import (
    MANIFEST_NAME,
    PartitionCorruptError,
    day_dir,
)
from multitower.origin import ORIGIN_FILE, ORIGIN_LINE
from multitower.records import origin_spec
from serving.model_handler import (
    ExamplesModelHandler,
    ModelRefusedError,
    VersionInfo,
    inspect_version,
    resolve_version,
)
from serving.score import (
    ScoreCountError,
    ScoreInputError,
    ScoreOutputError,
    check_features,
    run_score,
)
from tests.served_model import DAY, ROWS, day_examples

pytestmark = pytest.mark.integration
OUTPUTS = ["click", "conversion", "ranking_score", "watch_time"]  # the served project's, sorted


def reference_scores(version_path: str, examples: list[bytes]) -> dict[tuple[str, int], dict]:
    """`{(origin file, line): {output: score}}` of `predict_examples`, called in process."""
    loaded = tf.saved_model.load(version_path)
    scores = loaded.signatures["predict_examples"](examples=tf.constant(examples))
    origins = tf.io.parse_example(examples, origin_spec())
    keys = zip([f.decode() for f in origins[ORIGIN_FILE].numpy()],
               origins[ORIGIN_LINE].numpy().tolist(), strict=True)
    return {key: {name: float(v.numpy()[i]) for name, v in scores.items()}
            for i, key in enumerate(keys)}


def read_scores(out: Path) -> dict:
    """The published folder: its manifest, its entries, and its rows read from the listed files."""
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    tables = [pq.read_table(out / name) for name in manifest["files"]]
    rows = [row for table in tables for row in table.to_pylist()]
    return {"manifest": manifest, "entries": sorted(p.name for p in out.iterdir()),
            "schemas": [t.schema for t in tables], "file_rows": [t.num_rows for t in tables],
            "rows": rows}


@pytest.fixture(scope="module")
def scored(served_project, tmp_path_factory) -> dict:
    config = served_project["config"]
    base = served_project["export_base"]
    examples = day_examples(config)
    out = tmp_path_factory.mktemp("scores") / f"dt={DAY}"
    returned = run_score(config, DAY, str(out))
    first = read_scores(out)
    result = CliRunner().invoke(main, [
        "score", "--config", served_project["config_path"], "--date", DAY,
        "--model", f"{base}/1", "--out", str(out), "--shards", "3", "--batch-size", "100",
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    return {"out": out, "returned": returned, "first": first, "cli": result,
            "second": read_scores(out) if result.exit_code == 0 else None,
            "siblings": sorted(p.name for p in out.parent.iterdir()),
            "v1": reference_scores(f"{base}/1", examples),
            "v2": reference_scores(f"{base}/2", examples), "examples": examples}


def _assert_matches(rows: list[dict], reference: dict) -> None:
    by_origin = {(r["origin_file"], r["origin_line"]): r for r in rows}
    assert len(by_origin) == len(rows) == ROWS  # every (file, line) exactly once
    assert by_origin.keys() == reference.keys()
    for origin, expected in reference.items():
        got = by_origin[origin]
        assert set(got) - {"origin_file", "origin_line"} == set(expected)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-5), (origin, name)


def test_every_example_of_the_day_is_one_row_with_its_origin(scored, served_project):
    rows = scored["first"]["rows"]
    assert len(rows) == ROWS == served_project["manifest"]["rows"]["written"]
    origins = {(r["origin_file"], r["origin_line"]) for r in rows}
    assert len(origins) == ROWS
    log = served_project["labelled_path"]
    assert origins == {(log, line) for line in range(1, ROWS + 1)}  # the log file, line by line


def test_scores_are_the_versions_own_predict_examples_scores(scored):
    _assert_matches(scored["first"]["rows"], scored["v2"])
    assert all(r["ranking_score"] > 0 for r in scored["first"]["rows"])


def test_the_manifest_counts_add_up_and_name_the_version(scored, served_project):
    first, manifest = scored["first"], scored["first"]["manifest"]
    assert manifest == scored["returned"]
    assert manifest["kind"] == "scores" and manifest["date"] == DAY
    assert manifest["model"] == {"path": f"{served_project['export_base']}/2", "version": 2,
                                 "signature": "predict_examples"}
    assert manifest["rows"] == {"read": ROWS, "scored": ROWS}
    assert manifest["input"]["rows"] == ROWS
    assert manifest["input"]["tfrecords"] == day_dir(served_project["config"].data.tfrecords, DAY)
    assert manifest["input"]["files"] == served_project["manifest"]["files"]
    names = [f"scores-0000{i}-of-00002.parquet" for i in range(2)]  # one per TFRecord file
    assert manifest["files"] == names and first["entries"] == sorted([MANIFEST_NAME, *names])
    assert list(manifest["file_rows"].values()) == first["file_rows"]
    assert sum(first["file_rows"]) == ROWS
    columns = ["origin_file", "origin_line", *OUTPUTS]
    assert [c["name"] for c in manifest["schema"]] == columns
    for schema in first["schemas"]:
        assert schema.names == columns
        assert [str(t) for t in schema.types] == ["string", "int64"] + ["float"] * len(OUTPUTS)
        assert [c["type"] for c in manifest["schema"]] == [str(t) for t in schema.types]


def test_the_command_scores_with_the_version_given_and_replaces_the_same_day(scored,
                                                                             served_project):
    result = scored["cli"]
    assert result.exit_code == 0, result.output
    base = served_project["export_base"]
    assert result.stdout.strip().splitlines()[-1] == (
        f"{DAY}: scored {ROWS} rows with version 1 ({base}/1) into 3 file(s) under "
        f"{scored['out']}")
    second = scored["second"]
    assert second["manifest"]["model"]["version"] == 1
    assert second["manifest"]["rows"] == {"read": ROWS, "scored": ROWS}
    names = [f"scores-0000{i}-of-00003.parquet" for i in range(3)]
    assert second["entries"] == sorted([MANIFEST_NAME, *names])  # nothing left of the first run
    _assert_matches(second["rows"], scored["v1"])
    differs = [abs(scored["v1"][k]["click"] - scored["v2"][k]["click"]) for k in scored["v1"]]
    assert max(differs) > 1e-3  # the two versions do score differently
    assert scored["siblings"] == [scored["out"].name]  # no staging folder, no lease left


def test_a_day_not_preprocessed_is_refused_naming_its_manifest(served_project, tmp_path):
    result = CliRunner().invoke(main, ["score", "--config", served_project["config_path"],
                                       "--date", "2026-04-02", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    path = f"{served_project['config'].data.tfrecords}/dt=2026-04-02/{MANIFEST_NAME}"
    assert f"{path} does not exist" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_folder_without_a_saved_model_is_refused_naming_it(served_project, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelRefusedError, match=f"--model {empty}: not a SavedModel"):
        run_score(served_project["config"], DAY, str(tmp_path / "o"), str(empty))
    with pytest.raises(ModelRefusedError, match=f"--model {tmp_path / 'nope'}: no such folder"):
        resolve_version(str(tmp_path / "nope"), "unused")
    with pytest.raises(ModelRefusedError, match=f"^{empty}: not a SavedModel"):
        inspect_version(str(empty))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model"]


def test_a_model_folder_resolves_to_its_newest_version(served_project):
    base = served_project["export_base"]
    assert resolve_version(base, "unused") == f"{base}/2"
    assert resolve_version(f"{base}/1/", "unused") == f"{base}/1"
    assert resolve_version(None, base) == f"{base}/2"


def test_a_saved_model_without_predict_examples_or_unreadable_is_refused(served_project,
                                                                          tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: {"click": x * 2.0},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.f})
    with pytest.raises(ModelRefusedError, match=f"^{tmp_path / 'm'}: the SavedModel has no "
                                                r"predict_examples signature \(it has "
                                                r"\['serving_default'\]\)"):
        inspect_version(str(tmp_path / "m"))
    shutil.copytree(f"{served_project['export_base']}/1", tmp_path / "3")
    (tmp_path / "3" / "saved_model.pb").write_bytes(b"\x0a\xff not a proto")
    with pytest.raises(ModelRefusedError, match=f"^{tmp_path / '3'}/saved_model.pb: cannot be "
                                                "read as a SavedModel"):
        inspect_version(str(tmp_path / "3"))


def test_a_version_is_inspected_without_loading_it(served_project):
    info = inspect_version(f"{served_project['export_base']}/2")
    assert (info.version, info.input_name, list(info.outputs)) == (2, "examples", OUTPUTS)
    config = served_project["config"]
    assert info.features == {f.name: f.dtype for f in config.data.features}
    check_features(info, config.data)  # the version reads what the day holds


def test_a_version_reading_other_features_is_refused(served_project):
    info = VersionInfo("/x/2", 2, "examples", ("click",), {"hour": "float32", "age": "int64"})
    with pytest.raises(ScoreInputError, match=r"^/x/2 reads features the day's examples do not "
                                              r"hold as it expects: age \(int64; the config has "
                                              r"no such feature\), hour \(float32; the config "
                                              r"has int64\)"):
        check_features(info, served_project["config"].data)


def _day_copy(project: dict, folder: Path, **manifest_changes: object) -> object:
    """A config whose tfrecords are a copy of the day, its manifest changed as given."""
    raw = yaml.safe_load(Path(project["config_path"]).read_text())
    source = Path(day_dir(project["config"].data.tfrecords, DAY))
    target = folder / "tfrecords" / source.name
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    for key, value in manifest_changes.items():
        manifest[key] = value
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    raw["data"]["tfrecords"] = str(folder / "tfrecords")
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    return load_config(folder / "config.yaml")


def test_a_day_of_another_schema_or_with_a_missing_file_is_refused(served_project, tmp_path):
    config = _day_copy(served_project, tmp_path / "a", schema_fingerprint="0123456789abcdef")
    where = day_dir(config.data.tfrecords, DAY)
    with pytest.raises(ScoreInputError, match=f"^{where} was written for schema 0123456789abcdef"):
        run_score(config, DAY, str(tmp_path / "o"))
    config = _day_copy(served_project, tmp_path / "b")
    missing = Path(day_dir(config.data.tfrecords, DAY)) / "part-00001-of-00002.tfrecord.gz"
    missing.unlink()
    with pytest.raises(PartitionCorruptError, match=f"^{missing}: missing; run `multitower "
                                                    "verify`"):
        run_score(config, DAY, str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_run_whose_rows_do_not_add_up_publishes_nothing(scored, served_project, tmp_path):
    rows = dict(served_project["manifest"]["rows"], written=ROWS + 1, read=ROWS + 1)
    config = _day_copy(served_project, tmp_path / "day", rows=rows)
    out = tmp_path / "out"
    shutil.copytree(scored["out"], out)  # this day's scores, to be left as they are
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ScoreCountError, match=rf"^score {DAY}: read {ROWS} examples from .*, "
                                              rf"but its manifest lists {ROWS + 1} rows; "
                                              "nothing was published"):
        run_score(config, DAY, str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day", "out"]  # no staging left


def test_an_out_folder_of_another_day_or_of_other_files_is_refused(scored, served_project,
                                                                   tmp_path):
    other = tmp_path / "other-day"
    shutil.copytree(scored["out"], other)
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    (other / MANIFEST_NAME).write_text(json.dumps({**manifest, "date": "2026-03-31"}))
    with pytest.raises(ScoreOutputError, match=f"^--out {other} holds the scores of 2026-03-31, "
                                               f"not {DAY}; give each day its own folder"):
        run_score(served_project["config"], DAY, str(other))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ScoreOutputError, match=f"^--out {foreign} is not empty and holds no "
                                               rf"scores of {DAY} \(notes.txt\)"):
        run_score(served_project["config"], DAY, str(foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "other-day"]


def test_the_handler_feeds_a_batch_to_predict_examples(served_project, scored):
    path = f"{served_project['export_base']}/2"
    handler = ExamplesModelHandler(path, min_batch_size=4, max_batch_size=64)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 64}
    examples = scored["examples"][:5]
    results = list(handler.run_inference(examples, handler.load_model()))
    assert [r.example for r in results] == examples
    assert {r.model_id for r in results} == {path}
    reference = list(scored["v2"].values())[:5]  # day_examples keeps file order, as does v2
    for result, expected in zip(results, reference, strict=True):
        assert result.inference == pytest.approx(expected, abs=1e-6)
        assert all(isinstance(v, float) for v in result.inference.values())
    assert handler.get_num_bytes(examples) == sum(map(len, examples))
    with pytest.raises(ValueError, match="min_batch_size <= max_batch_size"):
        ExamplesModelHandler(path, min_batch_size=10, max_batch_size=2)
    with pytest.raises(ValueError, match="takes no inference arguments"):
        handler.validate_inference_args({"training": True})
