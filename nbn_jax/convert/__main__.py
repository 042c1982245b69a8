"""`python -m nbn_jax.convert`: the trainer's converter command line."""

import sys

from nbn_jax.training import conversion

sys.exit(conversion.main(sys.argv))
