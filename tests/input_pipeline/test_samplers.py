"""Samplers: their class distributions, structure, determinism and sharding."""

import numpy as np
import pytest
from scipy import stats

import input_pipeline as ip
from input_pipeline.samplers import class_probabilities, host_positions

COUNTS = ip.long_tail_counts(500, 10, 100)  # 500 ... 5 per class
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), COUNTS))


def _draws(sampler, epochs, seed=0, **kwargs):
  stream = ip.IndexStream(LABELS, ip.SamplerSpec(sampler, **kwargs), seed)
  return stream, stream[np.arange(epochs * stream.epoch_size)]


def _chi2_pvalue(labels, probabilities):
  observed = np.bincount(labels, minlength=len(probabilities))
  return stats.chisquare(observed, probabilities * len(labels)).pvalue


def test_instance_sampler_visits_every_example_once_per_epoch():
  stream, indices = _draws('instance', epochs=3)
  for epoch in indices.reshape(3, -1):
    np.testing.assert_array_equal(np.sort(epoch), np.arange(len(LABELS)))
  assert not np.array_equal(indices[: len(LABELS)], indices[len(LABELS) :])


@pytest.mark.parametrize('sampler', ['class', 'sqrt'])
def test_weighted_samplers_match_their_class_probabilities(sampler):
  _, indices = _draws(sampler, epochs=20)
  expected = class_probabilities(COUNTS, sampler)
  assert _chi2_pvalue(LABELS[indices], expected) > 1e-3
  # The test can tell samplers apart: instance probabilities are rejected.
  instance = class_probabilities(COUNTS, 'instance')
  assert _chi2_pvalue(LABELS[indices], instance) < 1e-12


def test_class_probabilities_by_hand():
  counts = np.array([9, 4, 1])
  np.testing.assert_allclose(
      class_probabilities(counts, 'instance'), [9 / 14, 4 / 14, 1 / 14]
  )
  np.testing.assert_allclose(class_probabilities(counts, 'class'), [1 / 3] * 3)
  np.testing.assert_allclose(
      class_probabilities(counts, 'sqrt'), [3 / 6, 2 / 6, 1 / 6]
  )
  np.testing.assert_allclose(
      class_probabilities(counts, 'progressive', 0.25),
      0.75 * np.array([9, 4, 1]) / 14 + 0.25 / 3,
  )


def test_progressive_moves_from_instance_to_class_balanced():
  num_epochs = 10
  stream, _ = _draws('progressive', epochs=0, num_epochs=num_epochs)
  for epoch in (0, 5, 9):
    labels = LABELS[stream.epoch(epoch)]
    expected = class_probabilities(COUNTS, 'progressive', epoch / num_epochs)
    assert _chi2_pvalue(labels, expected) > 1e-3, epoch
  first = np.bincount(LABELS[stream.epoch(0)], minlength=10)
  last = np.bincount(LABELS[stream.epoch(9)], minlength=10)
  assert first[9] < last[9] and first[0] > last[0]


def test_class_aware_draws_four_of_one_class_per_visit():
  stream, indices = _draws('class_aware', epochs=2)
  assert stream.epoch_size == COUNTS.max() * len(COUNTS)
  groups = LABELS[indices].reshape(-1, 4)
  assert (groups == groups[:, :1]).all()
  # Classes come in shuffled cycles: every C visits hold each class once.
  visits = groups[:, 0][: (len(groups) // 10) * 10].reshape(-1, 10)
  assert (np.sort(visits, axis=1) == np.arange(10)).all()
  # Within a class, examples are cycled: counts differ by at most one.
  for c in (0, 9):
    seen = np.bincount(indices[LABELS[indices] == c], minlength=len(LABELS))
    members = seen[LABELS == c]
    assert members.max() - members.min() <= 1


def test_stream_is_a_function_of_seed_and_position():
  for sampler in ip.SAMPLERS:
    spec = ip.SamplerSpec(sampler, num_epochs=5)
    a = ip.IndexStream(LABELS, spec, seed=7)
    b = ip.IndexStream(LABELS, spec, seed=7)
    positions = np.array([5, 4000, 3, 10**6, 4001])
    np.testing.assert_array_equal(a[positions], b[positions[::-1]][::-1])
    c = ip.IndexStream(LABELS, spec, seed=8)
    assert not np.array_equal(a[np.arange(50)], c[np.arange(50)])


def test_hosts_read_disjoint_slices_that_cover_each_batch():
  per_host = [host_positions(10, 3, 12, h, 2) for h in range(2)]
  assert per_host[0].shape == (3, 6)
  union = np.sort(np.concatenate([p.ravel() for p in per_host]))
  np.testing.assert_array_equal(union, np.arange(10 * 12, 13 * 12))
  np.testing.assert_array_equal(per_host[1][0], np.arange(126, 132))


def test_unknown_sampler_and_missing_epochs_are_clear_errors():
  with pytest.raises(ValueError, match="sampler='balanced' is not one of"):
    ip.SamplerSpec('balanced')
  with pytest.raises(ValueError, match='needs num_epochs'):
    ip.SamplerSpec('progressive')
