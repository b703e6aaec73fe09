"""The packed exchange of table gradients: rows, ids and counts survive the packing exactly."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.embeddings.exchange import pack_rows, unpack_rows


def _rows(values: list[list[float]], ids: list[int], buckets: int) -> tf.IndexedSlices:
    values = np.asarray(values, np.float32).reshape(len(ids), -1)
    return tf.IndexedSlices(tf.constant(values), tf.constant(ids, tf.int64),
                            tf.constant([buckets, values.shape[1]], tf.int64))


def test_packed_vectors_of_two_replicas_unpack_to_every_row_in_replica_order():
    # replica 0: 2 rows of a width-3 table, 1 row of a width-1 table; replica 1: 1 and 0 rows
    first = [_rows([[1, 2, 3], [4, 5, 6]], [7, 2**40 + 5], 2**41),
             _rows([[0.5]], [3], 10)]
    second = [_rows([[-1, -2, -3]], [2**40 + 5], 2**41),
              tf.IndexedSlices(tf.zeros([0, 1]), tf.zeros([0], tf.int64),
                               tf.constant([10, 1], tf.int64))]
    packed = [pack_rows(first), pack_rows(second)]
    # counts (2) + values (2*3 + 1*1) + ids (2 + 1, two float32 words each)
    assert packed[0].shape == (2 + 7 + 6,)
    wide, narrow = unpack_rows(tf.concat(packed, axis=0), first, 2)
    np.testing.assert_array_equal(wide.values.numpy(),
                                  [[1, 2, 3], [4, 5, 6], [-1, -2, -3]])
    # an id above 2**32 (a large table) keeps every bit: ids travel as raw int64 bits
    assert wide.indices.numpy().tolist() == [7, 2**40 + 5, 2**40 + 5]
    np.testing.assert_array_equal(narrow.values.numpy(), [[0.5]])
    assert narrow.indices.numpy().tolist() == [3]
    assert narrow.dense_shape.numpy().tolist() == [10, 1]


def test_ids_whose_bits_read_as_nan_floats_arrive_exact():
    # 0x7FC00000_7FC00001: both halves are NaN bit patterns as float32
    nan_bits = 0x7FC000007FC00001
    table = [_rows([[9.0]], [nan_bits], 2**63 - 1)]
    (back,) = unpack_rows(tf.concat([pack_rows(table)] * 3, axis=0), table, 3)
    assert back.indices.numpy().tolist() == [nan_bits] * 3


def test_rows_padded_to_their_bounds_pack_to_one_length_and_unpack_without_the_padding():
    def tables(rows: int) -> list[tf.IndexedSlices]:
        return [_rows([[float(i)] * 3 for i in range(rows)], list(range(100, 100 + rows)), 200),
                _rows([[1.0]], [4], 10)]

    bounds = [3, 2]
    few, many = pack_rows(tables(1), bounds), pack_rows(tables(3), bounds)
    # the same length whatever the rows: counts + 3x3 + 2x1 values + (3 + 2) ids of 2 words
    assert few.shape == many.shape == (2 + 9 + 2 + 10,)
    wide, narrow = unpack_rows(tf.concat([few, many], axis=0), tables(1), 2, bounds)
    np.testing.assert_array_equal(wide.values.numpy(), [[0, 0, 0], [0, 0, 0], [1, 1, 1],
                                                        [2, 2, 2]])
    assert wide.indices.numpy().tolist() == [100, 100, 101, 102]  # no padding row 0
    assert narrow.indices.numpy().tolist() == [4, 4]


def test_more_rows_than_the_bound_is_refused():
    with pytest.raises(tf.errors.InvalidArgumentError, match="more gradient rows"):
        pack_rows([_rows([[1.0], [2.0]], [1, 2], 10)], [1])
