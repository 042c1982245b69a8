"""Fixtures shared by the model tests."""

import jax
import pytest


@pytest.fixture
def images():
  def make(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)

  return make
