"""Exact evaluation input: padded, host-sharded batches that drop nothing.

`samplers.padded_eval_indices` lays a split out in whole global batches,
each host reading its own slice, padding marked by a False mask: every
example is counted exactly once over all hosts, and all hosts run the same
number of batches. `eval_batches` yields those batches (NumPy for in-memory
splits, so no TensorFlow is needed; tf.data for image files). The metrics
computed from them live with the trainer (`nbn_jax.training.metrics`).
"""

from typing import Iterator

import numpy as np

from input_pipeline import image_check
from input_pipeline.datasets import Preprocessing
from input_pipeline.samplers import padded_eval_indices
from input_pipeline.sources import Split


def eval_batches(
    split: Split,
    preprocessing: Preprocessing,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
  """This host's padded eval batches: 'image' uint8, 'label', 'mask'."""
  indices, mask = padded_eval_indices(
      len(split), global_batch_size, process_index, process_count
  )
  if not split.in_memory:
    from input_pipeline import tf_pipeline  # imports TensorFlow

    dataset, _ = tf_pipeline.eval_dataset(
        split,
        preprocessing,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    # An image that fails to decode stops the run with one line naming it.
    yield from image_check.naming_bad_images(
        tf_pipeline.as_numpy(dataset), split, lambda k: indices[k]
    )
    return
  for batch_indices, batch_mask in zip(indices, mask):
    yield {
        'image': split.images[batch_indices],
        'label': split.labels[batch_indices],
        'mask': batch_mask,
    }
