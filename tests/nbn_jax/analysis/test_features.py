"""Per-class feature magnitudes of trained runs, BN against NBN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nbn_jax import models
from nbn_jax.analysis import features
from nbn_jax.training import loop, plan, trained
from tests.nbn_jax.training.builders import quickstart_steps

# The two workdirs are trained once, on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group('features_workdirs')


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  """{'bn': workdir, 'nbn': workdir}: two quickstart steps each."""
  result = {}
  for norm in ('bn', 'nbn'):
    config = quickstart_steps(2, norm=norm)
    workdir = str(tmp_path_factory.mktemp(norm))
    loop.train_and_evaluate(config, workdir)
    result[norm] = workdir
  return result


@pytest.mark.slow
def test_features_are_what_the_classifier_reads(workdirs):
  run = trained.load(workdirs['nbn'])
  images = plan.load_benchmark(run.config).test.images[:40]
  pooled = features.pooled_features(
      run.model, run.variables, run.prepare, images
  )
  fc = run.variables['params']['fc']
  np.testing.assert_allclose(
      pooled @ fc['kernel'] + fc['bias'],
      run.logits(images),
      rtol=1e-5,
      atol=1e-5,
  )


def test_an_ensembles_features_are_its_experts_side_by_side():
  """The mean of the linear experts' logits is linear in them."""
  model = models.RIDEResNet8(10, num_experts=3, classifier='linear')
  images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), np.uint8)
  prepare = lambda x: jnp.asarray(x, jnp.float32) / 255
  variables = model.init(jax.random.key(0), prepare(images), train=False)
  pooled = features.pooled_features(model, variables, prepare, images)
  assert pooled.shape == (6, 3 * 64)
  heads = [variables['params'][f'expert_{e}']['fc'] for e in range(3)]
  logits = (
      sum(
          f @ h['kernel'] + h['bias']
          for f, h in zip(np.split(pooled, 3, 1), heads)
      )
      / 3
  )
  np.testing.assert_allclose(
      logits,
      model.apply(variables, prepare(images), train=False)['logits'],
      rtol=1e-5,
      atol=1e-5,
  )


@pytest.mark.slow
def test_report_compares_bn_and_nbn_per_class(workdirs):
  arms = {}
  for norm, workdir in workdirs.items():
    found_norm, counts, magnitudes = features.class_magnitudes(workdir)
    assert found_norm == norm
    assert magnitudes.shape == (10,) and (magnitudes > 0).all()
    arms[norm] = [(counts, magnitudes)]
  text = features.report(arms)
  assert '| 0 | 124 |' in text.splitlines()[2]  # head class first
  assert 'slope' in text and 'than under BN' in text


def test_fall_from_head_to_tail_by_hand():
  counts = np.array([100, 10, 1])
  summary = features.fall_from_head_to_tail(counts, counts**0.5)
  assert summary['slope'] == pytest.approx(0.5)
  assert summary['tail / head'] == pytest.approx(0.1)
  assert summary['spearman'] == pytest.approx(1.0)
  flat = features.fall_from_head_to_tail(counts, np.ones(3) * 2)
  assert flat['slope'] == pytest.approx(0.0, abs=1e-12)
  assert flat['cv'] == 0
