"""What the model families share: constructors with a positional class count."""

import pytest

from nbn_jax import models


@pytest.mark.parametrize(
    'family, stage_sizes',
    [
        (models.ResNet50, (3, 4, 6, 3)),
        (models.ResNeXt50, (3, 4, 6, 3)),
        (models.ResNet14, (1, 1, 1, 1)),
        (models.ResNet32, (5, 5, 5)),
        (models.ResNet8, (1, 1, 1)),
    ],
)
def test_num_classes_is_positional_and_fields_are_keywords(family, stage_sizes):
  model = family(1000, norm='bn')
  assert (model.num_classes, model.norm, model.stage_sizes) == (
      1000,
      'bn',
      stage_sizes,
  )
  assert family(num_classes=7).num_classes == 7
  assert models.ResNeXt50(3).groups == 32
