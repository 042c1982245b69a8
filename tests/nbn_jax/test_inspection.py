"""Which NBN layers a linen model calls, and which alpha each one reads."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from nbn_jax import NormalizedBatchNorm, models
from nbn_jax.inspection import (
    NBNLayer,
    layer_alphas,
    nbn_layer_paths,
    nbn_layers,
)


class _UserModel(nn.Module):
  """A user's own model: a plain BN, an NBN reading a model-level alpha, an
  NBN with its own alpha, and a submodule that is called twice."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda **kw: NormalizedBatchNorm(use_running_average=not train, **kw)
    gain = self.param('gain', nn.initializers.ones, ())
    x = nn.BatchNorm(use_running_average=not train, name='plain')(x)
    x = norm(name='shared', epsilon=1e-3)(x, alpha=gain)
    own = norm(name='own', norm_epsilon=1e-4)
    return own(own(x))


def test_a_users_model_names_its_layers_in_call_order():
  assert nbn_layer_paths(_UserModel(), (2, 4)) == ('shared', 'own')


def test_each_layer_reads_the_alpha_it_is_passed_or_its_own():
  model = _UserModel()
  x = jax.ShapeDtypeStruct((2, 4), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert nbn_layers(model, shapes, x) == {
      ('shared',): NBNLayer(('gain',), 1e-6),
      ('own',): NBNLayer(None, 1e-4),
  }


def test_layer_alphas_name_the_parameter_each_layer_reads():
  assert layer_alphas(_UserModel(), (2, 4)) == {
      'shared': 'gain',
      'own': 'own/alpha',
  }


def test_a_layer_without_scale_and_bias_reads_no_alpha():
  class Bare(nn.Module):

    @nn.compact
    def __call__(self, x, train=False):
      return NormalizedBatchNorm(True, use_scale=False, use_bias=False)(x)

  assert nbn_layer_paths(Bare(), (2, 4)) == ('NormalizedBatchNorm_0',)
  assert layer_alphas(Bare(), (2, 4)) == {}


def test_resnet50_reads_the_shared_alpha_at_the_reference_placement():
  model = models.ResNet50(10)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x
  )
  shared = NBNLayer(('nbn_alpha',), 1e-6)
  assert nbn_layers(model, shapes, x, train=False) == {
      ('layer4_0', 'bn3'): shared,
      ('layer4_0', 'downsample_bn'): shared,
      ('layer4_1', 'bn3'): shared,
      ('layer4_2', 'bn3'): shared,
  }
  assert nbn_layer_paths(model, (1, 32, 32, 3)) == (
      'layer4_0/bn3',
      'layer4_0/downsample_bn',
      'layer4_1/bn3',
      'layer4_2/bn3',
  )
  assert nbn_layer_paths(model.clone(norm='bn'), (1, 32, 32, 3)) == ()
