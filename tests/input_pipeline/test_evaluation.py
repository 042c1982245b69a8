"""Eval batches: padded and masked, the same from NumPy and tf.data."""

import numpy as np

import input_pipeline as ip


def test_in_memory_eval_batches_match_the_tf_data_layout():
  from input_pipeline import tf_pipeline

  rng = np.random.default_rng(0)
  split = ip.Split(
      'toy',
      rng.integers(0, 3, 37).astype(np.int32),
      3,
      images=rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8),
  )
  for host in range(2):
    numpy_batches = list(
        ip.evaluation.eval_batches(split, ip.Preprocessing('none'), 16, host, 2)
    )
    dataset, num_batches = tf_pipeline.eval_dataset(
        split,
        ip.Preprocessing('none'),
        global_batch_size=16,
        process_index=host,
        process_count=2,
    )
    tf_batches = list(tf_pipeline.as_numpy(dataset))
    assert len(numpy_batches) == len(tf_batches) == num_batches == 3
    for a, b in zip(numpy_batches, tf_batches):
      for key in ('image', 'label', 'mask'):
        np.testing.assert_array_equal(a[key], b[key])
