"""The config checks: each refusal is one line naming the field."""

import itertools

import jax
import pytest

from configs import default, imagenet_lt
from nbn_jax import models
from nbn_jax.training import checks, losses, plan, topology
from nbn_jax.training.errors import ConfigError
from tests.nbn_jax.training.builders import first_devices, tiny_config


def _check(config, device_count=8):
  return checks.check_config(config, device_count, process_count=1)


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('dataset', 'cifar1000', "config.dataset='cifar1000' is not one of"),
        ('norm', 'batchnorm', "config.norm='batchnorm' is not one of"),
        ('sampler', 'balanced', "config.sampler='balanced' is not one of"),
        ('bn_scope', 'host', "config.bn_scope='host' is not one of"),
        ('batch_size', 0, 'config.batch_size=0 must be > 0'),
        ('learning_rate', -0.1, 'config.learning_rate=-0.1 must be > 0'),
        (
            'backbone_lr_factor',
            0.0,
            'config.backbone_lr_factor=0.0 must be > 0',
        ),
        ('weight_decay', -1e-4, 'config.weight_decay=-0.0001 must be >= 0'),
        ('imbalance_factor', 0.5, 'config.imbalance_factor=0.5 must be >= 1'),
        ('momentum', 1.5, 'config.momentum=1.5 must be < 1'),
        ('lr_decay_factor', 0.0, 'config.lr_decay_factor=0.0 must be > 0'),
        ('image_size', -3, 'config.image_size=-3 must be >= 0'),
        ('logit_adjust_tau', -1.0, 'config.logit_adjust_tau=-1.0 must be'),
        ('lr_decay_epochs', (50.0, 10.0), 'must be epochs >= 0 in ascending'),
        ('lr_decay_epochs', ('abc',), 'must be epochs >= 0 in ascending'),
        (
            'batch_size',
            100,
            'config.batch_size=100 is not divisible by the 8 devices',
        ),
        ('eval_batch_size', 12, 'config.eval_batch_size=12 is not divisible'),
        ('ldam_scale', 0.0, 'config.ldam_scale=0.0 must be > 0'),
        ('ldam_max_m', -0.5, 'config.ldam_max_m=-0.5 must be >= 0'),
        ('drw_epoch', -1.0, 'config.drw_epoch=-1.0 must be >= 0'),
        ('drw_beta', 1.0, r'config.drw_beta=1.0 must be in \[0, 1\)'),
        (
            'ride_diversity_temperature',
            0.0,
            'config.ride_diversity_temperature=0.0 must be > 0',
        ),
        (
            'ride_reweight_factor',
            -0.05,
            'config.ride_reweight_factor=-0.05 must be >= 0',
        ),
    ],
)
def test_bad_values_name_the_field(field, value, message):
  config = default.get_config()
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    _check(config)


@pytest.mark.parametrize(
    'model, field, value, message',
    [
        (
            'ResNet32',
            'num_experts',
            3,
            r'config.num_experts=3: ResNet32 has no num_experts; leave it '
            r"unset, or choose one of \['RIDEResNet50'",
        ),
        ('ResNet50', 'reduce_dimension', True, 'ResNet50 has no reduce_dim'),
        ('RIDEResNet32', 'num_experts', 0, 'config.num_experts=0 must be > 0'),
        ('ResNet32', 'classifier', 'normed', "config.classifier='normed' is"),
        ('ResNet32', 'cosine_scale', 0.0, 'config.cosine_scale=0.0 must be'),
    ],
)
def test_model_fields_must_be_the_networks_and_sensible(
    model, field, value, message
):
  config = default.get_config()
  config.model = model
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    _check(config)


def test_unset_model_fields_pass_on_every_network():
  config = default.get_config()
  for model in ('ResNet32', 'ResNet50', 'RIDEResNet32', 'RIDEResNet50'):
    config.model = model
    _check(config)
  config.classifier, config.cosine_scale = 'cosine', 16.0
  _check(config)  # every ResNet has a classifier


def test_on_device_input_needs_in_memory_data():
  config = imagenet_lt.get_config()
  config.input_path = 'on_device'
  with pytest.raises(
      ConfigError, match='input_path=on_device needs data held in memory'
  ):
    _check(config)


def test_bn_groups_must_divide_the_devices():
  config = default.get_config()
  config.bn_scope, config.bn_group_size = 'group', 3
  with pytest.raises(
      ConfigError, match='bn_group_size=3 must divide the 8 devices'
  ):
    _check(config)


@pytest.mark.parametrize(
    'bn_scope, input_path, device_count',
    list(
        itertools.product(
            ('global', 'device', 'group'), ('on_device', 'tf_data'), (1, 2, 8)
        )
    ),
)
def test_every_scope_and_input_path_passes_on_1_2_and_8_devices(
    bn_scope, input_path, device_count
):
  config = default.get_config()
  config.bn_scope, config.input_path = bn_scope, input_path
  config.bn_group_size = min(2, device_count)
  layout = checks.check_config(config, device_count, process_count=1)
  topology = plan.build_topology(config, layout, first_devices(device_count))
  assert topology.device_count == device_count
  assert topology.batch_sharding.spec == jax.sharding.PartitionSpec(
      topology.data_axes
  )


def test_runs_that_cannot_be_laid_out_are_one_line_config_errors():
  config = default.get_config()
  config.num_runs, config.run_shards = 4, 3
  with pytest.raises(ConfigError, match='config.run_shards=3 must divide'):
    _check(config)
  config.run_shards, config.batch_size = 4, 126  # 2 devices per run: fits
  assert _check(config).data_shards == 2
  config.batch_size = 125
  with pytest.raises(
      ConfigError, match='config.batch_size=125 .* the 2 devices of each run'
  ) as e:
    _check(config)
  assert '\n' not in str(e.value)


def test_the_checks_return_the_layout_they_checked():
  layout = _check(tiny_config(num_runs=4))
  assert (layout.num_runs, layout.run_shards, layout.data_shards) == (4, 4, 2)
  assert layout.mesh_run_shards == 4
  assert _check(tiny_config()).mesh_run_shards is None  # one run: no axis


def test_warmup_by_epoch_needs_whole_epochs():
  config = tiny_config(warmup_granularity='epoch', warmup_epochs=2.5)
  with pytest.raises(ConfigError, match='must be a whole number'):
    _check(config)


@pytest.mark.parametrize('steps', [0, -2])
def test_a_step_limit_is_positive_or_the_whole_run(steps):
  with pytest.raises(ConfigError, match='config.num_train_steps'):
    _check(tiny_config(num_train_steps=steps))


@pytest.mark.parametrize('loss', ['ride', 'ride_balanced_softmax'])
def test_the_ride_losses_need_an_ensemble_model(loss):
  with pytest.raises(
      ConfigError,
      match=(
          f"config.loss='{loss}' needs an ensemble model .* "
          "config.model='ResNet32' is not one"
      ),
  ) as e:
    _check(tiny_config(model='ResNet32', loss=loss))
  assert '\n' not in str(e.value)


@pytest.mark.parametrize(
    'model, loss', [('ResNet8', 'ldam_drw'), ('RIDEResNet8', 'ride')]
)
@pytest.mark.parametrize('drw_epoch', [160.0, 90.0])
def test_a_reweighting_epoch_at_or_after_the_end_is_refused(
    model, loss, drw_epoch
):
  """At epoch 90 of a 90-epoch run no step is left to re-weight."""
  config = tiny_config(
      model=model, loss=loss, num_epochs=90.0, drw_epoch=drw_epoch
  )
  with pytest.raises(ConfigError) as error:
    _check(config)
  assert str(error.value).startswith(
      f'config.drw_epoch={drw_epoch} is not before the end of the run '
      '(config.num_epochs=90.0)'
  )
  assert '\n' not in str(error.value)


def test_a_reweighting_epoch_inside_the_run_passes():
  _check(tiny_config(loss='ldam_drw', num_epochs=90.0, drw_epoch=89.0))
  _check(tiny_config(loss='ldam_drw', num_epochs=90.0, drw_epoch=0.0))
  # Without re-weighting the field is not read.
  _check(tiny_config(loss='ldam', num_epochs=90.0, drw_epoch=160.0))


# --- Losses: what the registry entry says -------------------------------------


def _one_line_error(config):
  with pytest.raises(ConfigError) as error:
    _check(config)
  assert '\n' not in str(error.value)
  return str(error.value)


def test_an_unknown_loss_is_refused_naming_the_registered_ones():
  message = _one_line_error(tiny_config(loss='focal'))
  assert message.startswith("config.loss='focal' is not one of (")
  assert "'ldam_drw'" in message and "'ride'" in message


@pytest.mark.parametrize(
    'entry, message',
    [
        (
            losses.LossSpec(lambda *_: None, settings=('focal_gamma',)),
            (
                "config.loss='focal' takes the setting 'focal_gamma', which the"
                ' config lacks; add config.focal_gamma to configs/default.py.'
            ),
        ),
        (
            losses.LossSpec(lambda *_: None, switch_epoch='focal_epoch'),
            (
                "config.loss='focal' takes the setting 'focal_epoch', which the"
                ' config lacks; add config.focal_epoch to configs/default.py.'
            ),
        ),
        (
            lambda outputs, labels, progress: None,
            (
                "config.loss='focal' is registered as a function, not a "
                'losses.LossSpec; register LossSpec(its function, reads=..., '
                'settings=...).'
            ),
        ),
    ],
)
def test_a_half_registered_loss_is_refused_in_one_line(
    monkeypatch, entry, message
):
  monkeypatch.setitem(losses.LOSSES, 'focal', entry)
  assert _one_line_error(tiny_config(loss='focal')) == message


def test_a_loss_reading_an_output_no_network_returns_is_refused(monkeypatch):
  entry = losses.LossSpec(lambda *_: None, reads=('logits', 'embeddings'))
  monkeypatch.setitem(losses.LOSSES, 'contrastive', entry)
  message = _one_line_error(tiny_config(loss='contrastive'))
  assert message == (
      "config.loss='contrastive' needs a network returning 'embeddings' (it "
      "reads its output 'embeddings'); config.model='ResNet8' is not one. No "
      'network registered returns it; choose another loss.'
  )


def test_an_ensemble_loss_names_the_networks_that_return_what_it_reads():
  message = _one_line_error(tiny_config(loss='ride'))
  assert message == (
      "config.loss='ride' needs an ensemble model (it reads its per-expert "
      "logits); config.model='ResNet8' is not one. Choose one of "
      f'{[n for n in models.MODELS if n.startswith("RIDE")]}, or a loss for '
      'one network (e.g. ldam_drw).'
  )


def test_drw_beta_0_passes():
  """0 is documented as no re-weighting (weights all 1), not refused."""
  _check(tiny_config(loss='ldam_drw', drw_epoch=0.0, drw_beta=0.0))


@pytest.mark.parametrize('threshold', [20, 100])
def test_equal_few_and_many_thresholds_pass(threshold):
  """Few < t, Medium = t, Many > t: three groups still."""
  _check(tiny_config(few_threshold=threshold, many_threshold=threshold))


def test_a_few_threshold_above_the_many_one_is_refused_naming_both():
  with pytest.raises(ConfigError) as error:
    _check(tiny_config(few_threshold=101, many_threshold=100))
  assert str(error.value) == (
      'config.few_threshold must not exceed config.many_threshold.'
  )


@pytest.mark.parametrize(
    'input_path, run_shards', [('on_device', 4), ('tf_data', 1)]
)
def test_only_hosts_feeding_tf_data_batches_keep_the_runs_together(
    input_path, run_shards
):
  """2 hosts, 8 devices, 4 runs: each tf.data host feeds a slice of every
  run's batch, so the runs share all devices (1 run shard); on-device input
  holds the whole split on every host: the runs are laid out as on one."""
  config = tiny_config(num_runs=4, input_path=input_path)
  layout = checks.check_config(config, device_count=8, process_count=2)
  assert layout == topology.RunLayout(4, run_shards, 8 // run_shards)
