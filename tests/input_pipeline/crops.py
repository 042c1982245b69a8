"""Reading crop offsets and flips back from augmented images.

Each pixel of a position-coded image holds 1 + its row-major index, and the
zero padding holds 0, so any crop of it says where it was cut from.
"""

import numpy as np


def position_coded_images(batch: int, side: int = 8) -> np.ndarray:
  """(batch, side, side, 1) uint8, pixel (r, c) = 1 + r * side + c."""
  codes = 1 + np.arange(side * side, dtype=np.uint8).reshape(side, side)
  return np.broadcast_to(codes[None, :, :, None], (batch, side, side, 1)).copy()


def crop_offsets_and_flips(
    augmented: np.ndarray, padding: int
) -> tuple[np.ndarray, np.ndarray]:
  """((batch, 2) (row, column) offsets into the padded image, (batch,) flips).

  Needs crops that keep at least two original columns (padding <= side / 2).
  """
  offsets, flips = [], []
  side = augmented.shape[2]
  for image in np.asarray(augmented)[..., 0].astype(int):
    rows, cols = np.nonzero(image)
    row = rows[0]
    in_row = cols[rows == row]
    flipped = image[row, in_row[1]] < image[row, in_row[0]]
    r, c = divmod(image[row, in_row[0]] - 1, side)
    col = side - 1 - in_row[0] if flipped else in_row[0]
    offsets.append((r - row + padding, c - col + padding))
    flips.append(flipped)
  return np.array(offsets), np.array(flips)
