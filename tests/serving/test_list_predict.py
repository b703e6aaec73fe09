"""List-valued features in `predict` (in process), `query --config`, and batch scoring.

The model is `tests.serving.list_model`'s hand-made SavedModel (scores worked out by hand from
the raw rows); the config given to the commands declares the same features, its `codes` list
padded with 0, which only the config says (TF Serving's metadata carries no pad value).
"""

import json

import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from commands.cli import main
from multitower.config import ServingConfig
from multitower.records import parse_examples
from serving.lists import ListInputError, config_pads, fit, list_inputs, list_length
from serving.model_handler import ExamplesModelHandler, VersionInfo, inspect_version
from serving.predict import PredictError, Predictor
from serving.score import ScoreInputError, check_features
from tests.serving.double_server import model_config_text
from tests.serving.list_model import (
    CODES_LENGTH,
    MODEL,
    OUTPUTS,
    PADS,
    ROWS,
    TAGS_LENGTH,
    examples_of,
    expected,
    list_data,
    padded,
    write_list_model,
)
from tests.small_project import EXAMPLE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_list_model(tmp_path_factory.mktemp("list_model"))


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> str:
    """The example config with the list model's features, served as `lists`."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data"]["features"] = [f.model_dump(exclude_none=True) for f in list_data().features]
    raw["serving"] = {"model_name": MODEL}
    raw.pop("evaluate")  # it groups by user_id, which the list model has not
    path = tmp_path_factory.mktemp("list_config") / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def rows_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return str(path)


def read_scores(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_fit_cuts_to_the_first_l_elements_and_pads_at_the_end():
    spec = list_inputs({"t": "string"}, {"t": (-1, 3)})["t"]
    assert [fit(v, spec) for v in ([], ["a"], ["a", "b", "c"], ["a", "b", "c", "d"])] == [
        ["", "", ""], ["a", "", ""], ["a", "b", "c"], ["a", "b", "c"]]
    assert list_inputs({"c": "int64"}, {"c": (-1, 2)}, {"c": 7})["c"].pad == 7
    assert list_inputs({"u": "string", "c": "int64"}, {"u": (-1,), "c": None}) == {}
    with pytest.raises(ListInputError, match=r"input 'x' has shape \(None, None\)"):
        list_length("x", (-1, -1))
    with pytest.raises(ListInputError, match=r"input 'p' is a list of float32 values, which "
                                             r"have no default pad value"):
        list_inputs({"p": "float32"}, {"p": (-1, 2)})


def test_fit_gives_the_tensor_parse_examples_makes_of_the_same_lists_in_the_tfrecords():
    parsed = parse_examples(tf.constant(examples_of(ROWS)), list_data(), labels=False)
    lists = list_inputs({"tags": "string", "codes": "int64"},
                        {"tags": (-1, TAGS_LENGTH), "codes": (-1, CODES_LENGTH)}, PADS)
    for name, spec in lists.items():
        values = parsed[name].numpy().tolist()
        if name == "tags":
            values = [[v.decode() for v in row] for row in values]
        assert values == [fit(row[name], spec) for row in ROWS], name


def test_predictor_pads_with_the_configured_pads(base):
    predictor = Predictor(base, PADS)
    checked = [predictor.check_row(row)[0] for row in ROWS]
    assert checked == [padded(row) for row in ROWS]
    scores = predictor.score(checked)
    assert {n: v.tolist() for n, v in scores.items()} == {
        n: [expected(row)[n] for row in ROWS] for n in OUTPUTS}
    assert predictor.check_row({**ROWS[0], "codes": [0]}) == (
        None, "field 'codes': element 0: equals the pad value 0, which marks padding")
    with pytest.raises(PredictError, match=r"input 'codes': the pad value 'x' is not a int64"):
        Predictor(base, {"codes": "x"})


def test_predict_command_takes_the_pads_from_the_config(base, config_path, rows_path):
    with_config = CliRunner().invoke(main, ["predict", "--model", base, "--input", rows_path,
                                            "--config", config_path])
    assert with_config.exit_code == 0, with_config.output
    assert read_scores(with_config.stdout) == [expected(row) for row in ROWS]
    without = CliRunner().invoke(main, ["predict", "--model", base, "--input", rows_path])
    assert without.exit_code == 0, without.output
    # padded with -1, which this model does not take for padding: every row counts 3 codes
    assert [s["codes_count"] for s in read_scores(without.stdout)] == [3.0] * len(ROWS)


@pytest.mark.parametrize("protocol", ["grpc", "rest", "rest-row"])
def test_query_with_a_config_scores_lists_as_worked_out_by_hand(base, config_path, rows_path,
                                                                 protocol, tmp_path):
    from serving.double import read_model_config_file, start_server

    path = tmp_path / "models.config"
    path.write_text(model_config_text([{"name": MODEL, "base_path": base}]))
    name, _, form = protocol.partition("-")
    with start_server(read_model_config_file(str(path)), serving_config=ServingConfig(),
                      source=str(path)) as server:
        address = server.grpc_target if name == "grpc" else server.rest_url
        args = ["query", "--server", address, "--protocol", name, "--input", rows_path,
                "--batch-size", "3", *(["--rest-format", form] if form else [])]
        result = CliRunner().invoke(main, [*args, "--config", config_path])
        no_model = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert read_scores(result.stdout) == [expected(row) for row in ROWS]
    assert f"scored {len(ROWS)} rows with model '{MODEL}'" in result.stderr
    assert no_model.exit_code == 2
    assert "give --model (the served model's name), or --config" in no_model.output


def test_config_pads_are_the_list_features_pads(config_path):
    from multitower.config import load_config

    assert config_pads(load_config(config_path)) == {"tags": "", "codes": 0}


# --- batch scoring: serialized Examples of any list length ------------------------------------

def test_examples_with_lists_of_any_length_score_as_the_padded_rows(base):
    handler = ExamplesModelHandler(f"{base}/1")
    results = handler.run_inference(examples_of(ROWS), handler.load_model())
    for result, row in zip(results, ROWS, strict=True):
        assert result.inference == pytest.approx(expected(row), abs=0)


def test_inspect_version_reads_the_list_lengths_and_check_features_compares_them(base):
    info = inspect_version(f"{base}/1")
    assert info.list_lengths == {"tags": TAGS_LENGTH, "codes": CODES_LENGTH}
    data = list_data()
    check_features(info, data)  # the version reads what the config's examples hold
    other = VersionInfo(info.path, 1, "examples", info.outputs, dict(info.features),
                        {"tags": 5})
    with pytest.raises(ScoreInputError, match=r"reads features the day's examples do not hold "
                                              r"as it expects: codes \(int64; the config has "
                                              r"int64 list of 3\), tags \(string list of 5; the "
                                              r"config has string list of 4\)"):
        check_features(other, data)
