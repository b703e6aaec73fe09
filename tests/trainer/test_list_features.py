"""List-valued features in the model: pooling by hand, a table shared with a scalar feature,
padding that neither counts nor learns, and an export that takes padded lists.
"""

import copy
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml

from multitower.config import parse_config
from multitower.records import encode_example, parse_examples
from tests.bad_rows import GOOD
from tests.small_project import EXAMPLE
from trainer.embeddings import find_table
from trainer.export import EXAMPLES_SIGNATURE, export_saved_model, input_shapes
from trainer.features import PoolList
from trainer.network import build_network

L = 4
ITEMS = {"name": "recent_items", "type": "categorical", "multivalent": True, "max_length": L,
         "hash_buckets": 50, "embedding_dim": 3, "embedding_table": "item_id"}


def _config(tmp_path=None, **items) -> object:
    raw = yaml.safe_load(EXAMPLE.read_text())
    for feature in raw["data"]["features"]:
        if feature["type"] == "categorical":
            feature.update(hash_buckets=50, embedding_dim=3)
    raw["data"]["features"] = [f for f in raw["data"]["features"] if f["name"] != ITEMS["name"]]
    raw["data"]["features"].append({**ITEMS, **items})
    raw["model"]["mmoe"].update(num_experts=2, expert_units=[8])
    raw["model"]["tower_units"] = [4]
    if tmp_path is not None:
        raw["train"]["export_dir"] = str(tmp_path / "export")
    return parse_config(copy.deepcopy(raw), "test")


@pytest.mark.parametrize("combiner", ["mean", "sum", "sqrtn"])
def test_pooling_equals_a_hand_computation_padding_included(combiner):
    rng = np.random.default_rng(1)
    values = np.array([[b"a", b"b", b"", b""], [b"", b"", b"", b""], [b"c", b"c", b"d", b"e"],
                       [b"x", b"", b"y", b""]])  # padding may sit anywhere; all pad: no element
    embedded = rng.normal(size=(4, L, 3)).astype(np.float32)
    pooled = PoolList(combiner, "")([tf.constant(values), tf.constant(embedded)]).numpy()
    for row in range(4):
        real = [embedded[row, i] for i in range(L) if values[row, i] != b""]
        total = np.sum(real, axis=0) if real else np.zeros(3, np.float32)
        expected = {"sum": total, "mean": total / max(len(real), 1),
                    "sqrtn": total / np.sqrt(max(len(real), 1))}[combiner]
        np.testing.assert_allclose(pooled[row], expected, rtol=1e-6, atol=1e-7)
    ints = PoolList(combiner, -1)([tf.constant([[5, -1, 6, -1]], tf.int64),
                                   tf.constant(embedded[:1])]).numpy()
    real = embedded[0, [0, 2]].sum(axis=0)
    scale = {"sum": 1.0, "mean": 2.0, "sqrtn": np.sqrt(2.0)}[combiner]
    np.testing.assert_allclose(ints[0], real / scale, rtol=1e-6)
    with pytest.raises(ValueError, match="combiner must be one of"):
        PoolList("max", "")


def _batch(config, lists):
    rows = [{**GOOD, "recent_items": items} for items in lists]
    examples = [encode_example(row, config.data, ("f", n)) for n, row in enumerate(rows, 1)]
    return examples, parse_examples(tf.constant(examples), config.data, labels=False)


def _normalization(config):
    return {f.name: {"mean": 1.0, "std": 2.0} for f in config.data.numeric}


def test_a_list_shares_the_table_of_item_id_and_its_padding_learns_nothing():
    config = _config(combiner="sum")
    model = build_network(config, _normalization(config))
    found = find_table(model, "item_id")  # one table serves item_id and recent_items
    with pytest.raises(KeyError):
        find_table(model, "recent_items")
    table, start = found.layer, found.start
    _, features = _batch(config, [["i1", "i2", "i1"], []])
    pool = model.get_layer("pool_recent_items")
    assert pool.combiner == "sum"
    ids = tf.strings.to_hash_bucket_fast(["i1", "i2"], 50).numpy()
    rows = table.full_table().numpy()[start:found.stop]
    pooled = keras.Model(model.inputs, pool.output)(features).numpy()
    np.testing.assert_allclose(pooled[0], 2 * rows[ids[0]] + rows[ids[1]], rtol=1e-6)
    np.testing.assert_array_equal(pooled[1], np.zeros(3))
    # One training step: the pad's row gets a zero gradient.
    pad_row = int(tf.strings.to_hash_bucket_fast([""], 50).numpy()[0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(keras.Model(model.inputs, pool.output)(features))
    grads = tape.gradient(loss, table.trainable_weights)
    dense = tf.convert_to_tensor(grads[0]).numpy() if len(grads) == 1 else np.concatenate(
        [tf.convert_to_tensor(g).numpy() for g in grads])
    dense = dense[start:found.stop]
    assert not dense[pad_row].any()
    assert dense[ids[0]].tolist() == [2.0, 2.0, 2.0]  # i1 twice in the list (not item_id: 'i9')


def test_the_export_takes_padded_lists_and_matches_the_model(tmp_path):
    config = _config(tmp_path)
    keras.utils.set_random_seed(3)
    model = build_network(config, _normalization(config))
    assert input_shapes(config)["recent_items"] == [None, L]
    folder = export_saved_model(model, config, 1)
    examples, features = _batch(config, [["i1", "i2", "i3", "i4"], [], ["i7"]])
    expected = {name: value.numpy()[:, 0] for name, value in model(features).items()
                if "/" not in name}
    loaded = tf.saved_model.load(folder)
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1]["recent_items"].shape.as_list() == [None, L]
    served = serve(**features)
    from_examples = loaded.signatures[EXAMPLES_SIGNATURE](examples=tf.constant(examples))
    for name, value in expected.items():
        np.testing.assert_allclose(served[name].numpy(), value, atol=1e-5)
        np.testing.assert_allclose(from_examples[name].numpy(), value, atol=1e-5)
    # The list counts: another list for the same row scores otherwise.
    other = dict(features)
    other["recent_items"] = tf.constant([[b"i9", b"", b"", b""]] * 3)
    changed = serve(**other)
    assert any(not np.allclose(changed[name].numpy(), served[name].numpy()) for name in expected)
    assert os.path.isdir(folder)
