"""A workdir's model and variables for one's own apply (`trained.load`)."""

import numpy as np
import pytest

from configs import quickstart
from nbn_jax.training import loop, metrics
from nbn_jax.training import plan as plan_lib
from nbn_jax.training import trained
from nbn_jax.training.checkpoints import Checkpoints


def _train(workdir, **overrides):
  config = quickstart.get_config()
  config.update(
      batch_size=16,
      lr_batch_size=16,
      eval_batch_size=64,
      steps_per_dispatch=1,
      num_train_steps=2,
      **overrides,
  )
  return config, loop.train_and_evaluate(config, str(workdir))


def test_a_trained_workdir_gives_the_trainers_own_evaluation(tmp_path):
  config, results = _train(tmp_path)
  run = trained.load(str(tmp_path))
  plan = plan_lib.build_plan(config)
  test = plan.benchmark.test
  logits = run.logits(test.images)
  # The trainer's eval program on its own restored state, logit for logit.
  with Checkpoints(str(tmp_path), 1) as checkpoints:
    state, _ = checkpoints.restore_latest(plan.runs.init_state())
  cfg = plan.core.step_config
  ours = cfg.model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      cfg.prepare(test.images),
      train=False,
  )
  np.testing.assert_allclose(logits, ours, rtol=1e-5, atol=1e-6)
  correct, total, _ = metrics.class_hits(
      logits, test.labels, np.ones(len(test), bool), 10
  )
  np.testing.assert_allclose(
      np.asarray(correct) / np.asarray(total),
      results['last']['test_per_class'],
  )


def test_run_k_of_a_k_run_workdir(tmp_path):
  _, results = _train(tmp_path, num_runs=2)
  for k in range(2):
    run = trained.load(str(tmp_path), run=k)
    images = plan_lib.load_benchmark(run.config).test.images
    top1 = float(
        np.mean(
            run.logits(images).argmax(1)
            == (plan_lib.load_benchmark(run.config).test.labels)
        )
    )
    assert top1 == pytest.approx(results['runs'][k]['last']['test']['top1'])
  with pytest.raises(ValueError, match='holds runs 0..1'):
    trained.load(str(tmp_path), run=2)


def test_a_folder_that_is_no_workdir_is_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json does not exist'):
    trained.load(str(tmp_path))
