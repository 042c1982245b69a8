"""How one run or K sit on the devices: the layout checks."""

import pytest

from nbn_jax.training import topology


def test_default_layouts():
  layout, fits = topology.run_layout, topology.RunLayout
  assert layout(4, 8, 16, 16) == fits(4, 4, 2)
  assert layout(3, 8, 16, 16) == fits(3, 1, 8)
  assert layout(16, 8, 16, 16) == fits(16, 8, 1)
  assert layout(4, 8, 16, 16, 'device') == fits(4, 4, 2)
  # Hosts that feed slices of every run's batch: the runs share all devices.
  assert layout(4, 8, 16, 16, feeding_hosts=2) == fits(4, 1, 8)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(num_runs=0), r'config.num_runs=0 must be >= 1'),
        (dict(num_runs=4, run_shards=3), r'config.run_shards=3 must divide'),
        (dict(num_runs=16, run_shards=16), r'config.run_shards=16 must divide'),
        (
            dict(num_runs=4, run_shards=2, feeding_hosts=2),
            r'config.run_shards=2 must be 1 \(or 0\) when 2 hosts feed',
        ),
        (
            dict(num_runs=3, batch_size=12),
            r'config.batch_size=12 is not divisible by the 8 devices',
        ),
        (
            dict(num_runs=2, eval_batch_size=6),
            r'config.eval_batch_size=6 .* multiple of 4',
        ),
        (
            dict(num_runs=2, bn_scope='group', bn_group_size=8),
            r'config.bn_group_size=8 must divide the 4 devices of each run',
        ),
        (
            dict(num_runs=1, bn_scope='group', bn_group_size=3),
            r'config.bn_group_size=3 must divide the 8 devices',
        ),
    ],
)
def test_runs_that_do_not_fit_the_devices_get_a_one_line_error(kwargs, message):
  settings = dict(device_count=8, batch_size=16, eval_batch_size=16) | kwargs
  with pytest.raises(topology.RunLayoutError, match=message) as error:
    topology.run_layout(**settings)
  assert '\n' not in str(error.value)
