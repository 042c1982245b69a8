"""The run axis: run k's keys are those of a single run with its seed."""

import jax
import numpy as np

from nbn_jax.training import run_axis


def test_run_keys_are_each_seeds_single_run_keys():
  init_keys, data_keys = run_axis.run_keys(7, 3)
  single = run_axis.run_keys(7, 1)  # one run: unstacked keys
  assert single[0].shape == single[1].shape == ()
  for k in range(3):
    init_key, data_key = jax.random.split(jax.random.key(7 + k))
    if k == 0:
      for ours, expected in zip(single, (init_key, data_key)):
        np.testing.assert_array_equal(
            jax.random.key_data(ours), jax.random.key_data(expected)
        )
    np.testing.assert_array_equal(
        jax.random.key_data(init_keys[k]), jax.random.key_data(init_key)
    )
    np.testing.assert_array_equal(
        jax.random.key_data(data_keys[k]), jax.random.key_data(data_key)
    )
