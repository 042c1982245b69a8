"""nbn-jax: Normalizing Batch Normalization for long-tailed recognition."""

from nbn_jax.normalization import (
    NormalizedBatchNorm,
    effective_affine,
    normalized_to_alpha,
    safe_l2_norm,
)

__version__ = '0.1.0'

__all__ = [
    'NormalizedBatchNorm',
    'effective_affine',
    'normalized_to_alpha',
    'safe_l2_norm',
]
