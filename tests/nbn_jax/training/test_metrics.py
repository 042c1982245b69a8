"""Long-tail metrics: shot groups by training count, padding ignored,
groups averaged over examples."""

import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline as ip
from nbn_jax.training import metrics


def test_cifar100_if100_has_35_35_30_many_medium_few():
  groups = metrics.shot_groups(ip.long_tail_counts(500, 100, 100))
  assert [len(groups[g]) for g in ('many', 'medium', 'few')] == [35, 35, 30]
  assert groups['many'].tolist() == list(range(35))


def test_shot_group_boundaries():
  counts = np.array([101, 100, 20, 19, 5000, 0])
  groups = metrics.shot_groups(counts)
  assert groups['many'].tolist() == [0, 4]
  assert groups['medium'].tolist() == [1, 2]
  assert groups['few'].tolist() == [3, 5]
  custom = metrics.shot_groups(counts, many=19, few=6)
  assert custom['many'].tolist() == [0, 1, 2, 4]
  assert 'Many (> 19' in metrics.describe_shot_groups(custom, 19, 6)


def test_equal_thresholds_leave_medium_the_classes_at_the_threshold():
  groups = metrics.shot_groups(np.array([51, 50, 49, 50]), many=50, few=50)
  assert {g: ids.tolist() for g, ids in groups.items()} == {
      'many': [0],
      'medium': [1, 3],
      'few': [2],
  }
  with pytest.raises(ValueError, match='few <= many, got few=51, many=50'):
    metrics.shot_groups(np.array([51]), many=50, few=51)


def test_classes_without_a_known_count_are_in_no_group():
  counts = np.array([101, 0, 50, 0, 5])
  groups = metrics.shot_groups(counts, counted=counts > 0)
  assert {g: ids.tolist() for g, ids in groups.items()} == {
      'many': [0],
      'medium': [2],
      'few': [4],
  }


def test_class_hits_ignore_masked_examples():
  logits = jnp.array([[2.0, 0, 0], [0, 3, 0], [0, 0, 1], [5, 0, 0], [0, 9, 0]])
  labels = jnp.array([0, 2, 2, 1, 1])
  mask = jnp.array([True, True, True, True, False])
  correct, total, _ = metrics.class_hits(logits, labels, mask, 3)
  assert correct.tolist() == [1, 0, 1]
  assert total.tolist() == [1, 1, 2]


def test_top5_counts_the_examples_whose_class_has_one_of_the_5_top_logits():
  """7 classes; example 0's class has the 2nd logit, example 1's the 6th,
  example 2's the 5th (its 5th-highest, a tie below it is not), example 3
  (masked) the 1st."""
  logits = jnp.array([
      [0.0, 9, 8, 7, 6, 5, 4],
      [6.0, 5, 4, 3, 2, 1, 7],
      [7.0, 6, 5, 4, 3, 2, 2],
      [0.0, 0, 0, 0, 0, 0, 9],
  ])
  labels = jnp.array([2, 5, 4, 6])
  mask = jnp.array([True, True, True, False])
  hits = metrics.class_hits(logits, labels, mask, 7)
  assert hits.correct_top5.tolist() == [0, 0, 1, 0, 1, 0, 0]
  assert hits.correct.tolist() == [0] * 7
  assert hits.total.tolist() == [0, 0, 1, 0, 1, 1, 0]


def test_top5_is_reported_where_it_is_counted():
  groups = {
      'many': np.array([0]),
      'medium': np.array([1]),
      'few': np.array([], int),
  }
  accuracy = metrics.LongTailAccuracy.empty(2, groups, top5=True)
  accuracy.update(np.array([1, 0]), np.array([4, 4]), np.array([3, 2]))
  assert list(accuracy.summary()) == ['top1', 'top5', 'many', 'medium', 'few']
  assert accuracy.summary()['top5'] == pytest.approx(5 / 8)
  assert 'top5' not in metrics.LongTailAccuracy.empty(2, groups).summary()


def test_summary_by_hand():
  groups = {
      'many': np.array([0]),
      'medium': np.array([1, 2]),
      'few': np.array([], int),
  }
  accuracy = metrics.LongTailAccuracy.empty(3, groups)
  accuracy.update(np.array([3, 1, 0]), np.array([4, 2, 2]))
  accuracy.update(np.array([1, 0, 2]), np.array([4, 0, 2]))
  summary = accuracy.summary()
  assert accuracy.num_examples == 14
  assert summary['top1'] == pytest.approx(7 / 14)
  assert summary['many'] == pytest.approx(4 / 8)
  assert summary['medium'] == pytest.approx(3 / 6)  # over examples, not classes
  assert np.isnan(summary['few'])
  np.testing.assert_allclose(accuracy.per_class(), [0.5, 0.5, 0.5])
