"""Long-tail metrics: padding is ignored, groups average over examples."""

import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline as ip


def test_class_hits_ignore_masked_examples():
  logits = jnp.array([[2.0, 0, 0], [0, 3, 0], [0, 0, 1], [5, 0, 0], [0, 9, 0]])
  labels = jnp.array([0, 2, 2, 1, 1])
  mask = jnp.array([True, True, True, True, False])
  correct, total = ip.class_hits(logits, labels, mask, 3)
  assert correct.tolist() == [1, 0, 1]
  assert total.tolist() == [1, 1, 2]


def test_summary_by_hand():
  groups = {
      'many': np.array([0]),
      'medium': np.array([1, 2]),
      'few': np.array([], int),
  }
  accuracy = ip.LongTailAccuracy.empty(3, groups)
  accuracy.update(np.array([3, 1, 0]), np.array([4, 2, 2]))
  accuracy.update(np.array([1, 0, 2]), np.array([4, 0, 2]))
  summary = accuracy.summary()
  assert accuracy.num_examples == 14
  assert summary['top1'] == pytest.approx(7 / 14)
  assert summary['many'] == pytest.approx(4 / 8)
  assert summary['medium'] == pytest.approx(3 / 6)  # over examples, not classes
  assert np.isnan(summary['few'])
  np.testing.assert_allclose(accuracy.per_class(), [0.5, 0.5, 0.5])


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
