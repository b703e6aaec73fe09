"""Exports TF Serving can trust: warmup file, the tf.Example signature, checks before publishing."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from multitower.config import parse_config
from multitower.exports import model_base, versions
from multitower.records import encode_example
from multitower.tfs_requests import (
    RequestError,
    predict_request,
    read_warmup,
    request_rows,
    warmup_path,
    write_warmup,
)
from tests.small_project import DAYS, EXAMPLE, config_in
from trainer.export import (
    EXAMPLES_SIGNATURE,
    ExportRejectedError,
    export_saved_model,
    input_dtypes,
    warmup_requests,
)
from trainer.network import build_network

WARMUP = 8
OUTPUTS = ["click", "conversion", "watch_time"]


def _config(export_dir, **serving):
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature["hash_buckets"] = min(feature["hash_buckets"], 100)
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["model"]["tower_units"] = [8]
    raw["train"]["export_dir"] = str(export_dir)
    raw["serving"] = {"model_name": "ranker", "warmup_size": WARMUP, **serving}
    return parse_config(raw)


def _examples(config, n, seed=0):
    """Serialized Examples as the Beam job writes them: features, labels and origin fields."""
    rng = np.random.default_rng(seed)
    examples = []
    for line in range(n):
        row = {}
        for f in config.data.features:
            if f.multivalent:  # 0 to max_length + 2 elements (cut below)
                row[f.name] = [f"{f.name}-{rng.integers(30)}"
                               for _ in range(rng.integers(f.max_length + 3))][:f.max_length]
                continue
            row[f.name] = (f"{f.name}-{rng.integers(30)}" if f.dtype == "string" else
                           int(rng.integers(24)) if f.dtype == "int64" else
                           float(rng.normal(3.0, 2.0)))
        for t in config.data.tasks:
            row[t.label_column] = (float(rng.integers(2)) if t.type == "binary"
                                   else float(rng.exponential(20.0)))
        examples.append(encode_example(row, config.data, origin=("logs/part-0.jsonl", line + 1)))
    return examples


def _network(config, seed=0):
    keras.utils.set_random_seed(seed)
    return build_network(config, {f.name: {"mean": 3.0, "std": 2.0} for f in config.data.numeric})


def _features(examples, lists=None):
    """The features of serialized Examples, parsed independently of the code under test.

    `lists` maps a list feature to `(max_length, pad)`: its elements, padded.
    """
    lists = lists or {}
    features = {}
    for serialized in examples:
        example = tf.train.Example.FromString(serialized)
        for name, feature in example.features.feature.items():
            values = list(getattr(feature, feature.WhichOneof("kind")).value)
            if name in lists:
                length, pad = lists[name]
                pad = pad.encode() if isinstance(pad, str) else pad
                features.setdefault(name, []).append(values + [pad] * (length - len(values)))
            else:
                features.setdefault(name, []).append(values[0])
    return features


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("export"))
    network = _network(config)
    examples = _examples(config, WARMUP + 5)
    path = export_saved_model(network, config, 1, examples[:WARMUP])
    return config, network, examples, path


def test_the_warmup_file_is_a_tfrecord_of_prediction_logs_over_the_days_first_rows(exported):
    config, _, examples, path = exported
    assert path == os.path.join(config.train.export_dir, "impressions", "1")
    file = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    assert warmup_path(path) == file and os.path.isfile(file)
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(file)]  # uncompressed TFRecord
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log"]
    lists = {f.name: (f.max_length, f.list_pad) for f in config.data.multivalent}
    assert lists  # the example config holds a list feature
    features = _features(examples[:WARMUP], lists)
    kinds = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
    for log, size in zip(logs, [1, WARMUP], strict=True):
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == (
            "ranker", "serving_default")
        assert sorted(request.inputs) == sorted(f.name for f in config.data.features)
        for f in config.data.features:
            proto = request.inputs[f.name]
            assert proto.dtype == kinds[f.dtype].as_datatype_enum
            shape = [size, lists[f.name][0]] if f.name in lists else [size]
            assert [d.size for d in proto.tensor_shape.dim] == shape
            values = tf.make_ndarray(proto)
            expected = features[f.name][:size]
            if f.dtype == "float32":
                np.testing.assert_allclose(values, expected, rtol=1e-6)
            else:  # the labels and origin fields are not inputs
                assert values.tolist() == expected


def test_warmup_requests_run_against_the_export_give_the_models_outputs(exported):
    config, network, _, path = exported
    transforms = {t.name: t.label_transform for t in config.data.tasks}
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    for log_request in read_warmup(warmup_path(path)):
        rows = request_rows(log_request)
        served = serve(**{k: tf.constant(v) for k, v in rows.items()})
        in_memory = network({k: tf.constant(v) for k, v in rows.items()}, training=False)
        assert sorted(served) == OUTPUTS
        for name in OUTPUTS:
            want = in_memory[name].numpy()[:, 0]
            if transforms[name] == "log1p":  # inverted in the signature
                want = np.expm1(want)
            assert served[name].dtype == tf.float32 and served[name].shape == (len(want),)
            np.testing.assert_allclose(served[name].numpy(), want, rtol=1e-5, atol=1e-6)


def test_predict_examples_scores_the_tfrecords_own_format_as_serving_default_does(exported):
    config, _, examples, path = exported
    loaded = tf.saved_model.load(path)
    by_examples = loaded.signatures[EXAMPLES_SIGNATURE](examples=tf.constant(examples))
    features = _features(examples, {f.name: (f.max_length, f.list_pad)
                                    for f in config.data.multivalent})
    rows = {f.name: tf.constant(features[f.name], input_dtypes(config)[f.name])
            for f in config.data.features}
    by_rows = loaded.signatures["serving_default"](**rows)
    assert sorted(by_examples) == OUTPUTS
    for name in OUTPUTS:
        assert by_examples[name].shape == (len(examples),)
        np.testing.assert_allclose(by_examples[name].numpy(), by_rows[name].numpy(), rtol=1e-6)
    # an Example without labels or origin (what a client would build) scores the same
    bare = tf.train.Example.FromString(examples[0])
    for key in [*(t.label_column for t in config.data.tasks), "_origin_file", "_origin_line"]:
        del bare.features.feature[key]
    alone = loaded.signatures[EXAMPLES_SIGNATURE](examples=tf.constant([bare.SerializeToString()]))
    np.testing.assert_allclose(alone["click"].numpy(), by_rows["click"].numpy()[:1], rtol=1e-6)


def test_the_larger_warmup_request_fits_the_batching_limit(tmp_path):
    config = _config(tmp_path, batching={"max_batch_size": 4, "allowed_batch_sizes": [2, 4]})
    examples = _examples(config, WARMUP)
    sizes = [len(next(iter(request_rows(r).values()))) for r in warmup_requests(config, examples)]
    assert sizes == [1, 4]  # TF Serving refuses a request above max_batch_size
    off = _config(tmp_path, batching={"enabled": False})
    assert [len(request_rows(r)["hour"]) for r in warmup_requests(off, examples[:3])] == [1, 3]


def test_a_nan_weight_is_rejected_and_the_previous_version_stays_the_newest(tmp_path):
    config = _config(tmp_path)
    network = _network(config)
    examples = _examples(config, WARMUP)
    export_saved_model(network, config, 1, examples)
    bias = network.get_layer("conversion").out.bias
    bias.assign(tf.fill(bias.shape, float("nan")))
    with pytest.raises(ExportRejectedError) as raised:
        export_saved_model(network, config, 2, examples)
    assert str(raised.value) == (
        "export 2 of model 'impressions' rejected: serving_default on warmup request 1 (1 rows): "
        "output 'conversion' has 1 of 1 values not finite (row 0: nan); it is not published and "
        "TF Serving keeps the versions it serves")
    base = model_base(str(tmp_path), "impressions")
    assert versions(base) == [1] and sorted(os.listdir(base)) == ["1"]  # staging removed too
    served = tf.saved_model.load(os.path.join(base, "1")).signatures[EXAMPLES_SIGNATURE](
        examples=tf.constant(examples))
    assert np.isfinite(served["conversion"].numpy()).all()


class _Overconfident(keras.Model):
    """The network with a click "probability" that can leave [0, 1]."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def call(self, inputs, training=None):
        outputs = dict(self.network(inputs, training=training))
        outputs["click"] = outputs["click"] * 3.0 + 0.5
        return outputs


def test_a_probability_outside_0_1_is_rejected(tmp_path):
    config = _config(tmp_path)
    examples = _examples(config, WARMUP)
    with pytest.raises(ExportRejectedError, match=r"^export 1 of model 'impressions' rejected: "
                       r"serving_default on warmup request 1 \(1 rows\): output 'click' is a "
                       r"probability, but 1 of 1 values are outside \[0, 1\] \(row 0: "):
        export_saved_model(_Overconfident(_network(config)), config, 1, examples)
    assert versions(model_base(str(tmp_path), "impressions")) == []


def test_warmup_file_limits_and_faults(tmp_path):
    dtypes = {"a": tf.string, "b": tf.int64}
    request = predict_request("m", {"a": ["x", b"y"], "b": [1, 2]}, dtypes)
    assert request_rows(request)["a"].tolist() == [b"x", b"y"]
    with pytest.raises(RequestError, match=r"missing inputs \['b'\], unknown inputs \['c'\]"):
        predict_request("m", {"a": ["x"], "c": [1]}, dtypes)
    with pytest.raises(RequestError, match="same number of rows"):
        predict_request("m", {"a": ["x"], "b": [1, 2]}, dtypes)
    path = str(tmp_path / "assets.extra" / "tf_serving_warmup_requests")
    with pytest.raises(RequestError, match="1 to 1000 requests"):
        write_warmup(path, [request] * 1001)
    write_warmup(path, [request] * 3)
    assert [r.model_spec.name for r in read_warmup(path)] == ["m"] * 3
    with tf.io.TFRecordWriter(path) as writer:  # a record that is some other PredictionLog
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=predict_pb2.PredictRequest())
        ).SerializeToString())
        writer.write(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog()).SerializeToString())
    with pytest.raises(RequestError, match="record 2 is a classify_log log, not a predict_log"):
        read_warmup(path)
    (tmp_path / "junk").write_bytes(b"not a tfrecord at all")
    with pytest.raises(RequestError, match="not a TFRecord file"):
        read_warmup(str(tmp_path / "junk"))


class _NanAtTheEnd(keras.callbacks.Callback):
    """Breaks the model after its last step: the day's checkpoint and export carry a NaN."""

    def on_train_end(self, logs=None):
        bias = self.model.network.get_layer("click").out.bias
        bias.assign(tf.fill(bias.shape, float("nan")))


def test_a_rejected_day_is_not_published_and_a_relaunch_trains_it_again(small_project, tmp_path):
    from multitower.config import load_config
    from trainer.train import train_day

    config = load_config(config_in(small_project, tmp_path, train={"backup_every_steps": 3},
                                   mmoe={"num_experts": 2, "expert_units": [8]}))
    steps = [m["rows"]["written"] // config.train.batch_size for m in small_project["manifests"]]
    model_dir, checkpoints = tmp_path / "model", tmp_path / "model" / "checkpoints"
    base = model_base(config.train.export_dir, config.model.name)
    first = train_day(config, DAYS[0])
    assert first.version == 1
    assert len(read_warmup(warmup_path(first.export_path))) == 2

    broken = steps[0] + steps[1]
    with pytest.raises(ExportRejectedError) as raised:
        train_day(config, DAYS[1], callbacks=[_NanAtTheEnd()])
    assert str(raised.value) == (
        "export 2 of model 'impressions' rejected: serving_default on warmup request 1 (1 rows): "
        "output 'click' has 1 of 1 values not finite (row 0: nan); it is not published and TF "
        f"Serving keeps the versions it serves. Day {DAYS[1]} stays untrained: its checkpoint is "
        f"kept aside as {checkpoints}/rejected-ckpt-{broken} and {model_dir}/state.json is "
        f"unchanged; run the same command again to train the day again from "
        f"{checkpoints}/ckpt-{steps[0]}")
    assert versions(base) == [1] and sorted(os.listdir(base)) == ["1"]
    state = json.loads((model_dir / "state.json").read_text())
    assert [d["date"] for d in state["days"]] == [DAYS[0]]
    assert tf.train.latest_checkpoint(str(checkpoints)) == f"{checkpoints}/ckpt-{steps[0]}"
    assert (checkpoints / f"rejected-ckpt-{broken}.index").exists()
    assert not glob.glob(f"{checkpoints}/ckpt-{broken}.*")
    assert not glob.glob(f"{model_dir}/backup/dt={DAYS[1]}-*")  # no half-day to resume
    assert not (model_dir / "lease.json").exists()

    again = train_day(config, DAYS[1])  # the same command, without the fault
    assert (again.version, again.global_step) == (2, broken)
    assert versions(base) == [1, 2]
    state = json.loads((model_dir / "state.json").read_text())
    assert [(d["date"], d["version"]) for d in state["days"]] == [(DAYS[0], 1), (DAYS[1], 2)]
    assert tf.train.latest_checkpoint(str(checkpoints)) == f"{checkpoints}/ckpt-{broken}"
    manager = tf.train.get_checkpoint_state(str(checkpoints))
    assert [os.path.basename(p) for p in manager.all_model_checkpoint_paths] == [
        f"ckpt-{steps[0]}", f"ckpt-{broken}"]


def test_a_rejected_checkpoint_is_renamed_and_dropped_from_the_managers_list(tmp_path):
    from trainer.model_dir import ModelDir
    from trainer.train import _set_checkpoint_aside

    model_dir = ModelDir(str(tmp_path))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)),
                                         model_dir.checkpoints, max_to_keep=5)
    manager.save(checkpoint_number=10)
    manager.save(checkpoint_number=20)
    assert _set_checkpoint_aside(model_dir, 20) == model_dir.rejected_checkpoint(20)
    assert tf.train.latest_checkpoint(model_dir.checkpoints) == model_dir.checkpoint(10)
    assert sorted(os.listdir(model_dir.checkpoints)) == [
        "checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index",
        "rejected-ckpt-20.data-00000-of-00001", "rejected-ckpt-20.index"]
    again = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)),
                                       model_dir.checkpoints, max_to_keep=5)
    assert again.checkpoints == [model_dir.checkpoint(10)]
    _set_checkpoint_aside(model_dir, 10)  # the first day rejected: no checkpoint left
    assert tf.train.latest_checkpoint(model_dir.checkpoints) is None
    assert not os.path.exists(model_dir.checkpoint_list)
