"""Long-tailed input pipelines for CIFAR-LT, ImageNet-LT, iNaturalist 2018,
Places-LT and the embedded digits quickstart.

Importing this package needs no TensorFlow: the long-tail protocol, the
samplers, the sources, the benchmark registry and the on-device path are
NumPy and JAX. The tf.data pipeline (`tf_pipeline`, `preprocess`) imports
TensorFlow and is imported on demand, as the TFDS source imports
TensorFlow Datasets when it is used. `DATASETS` and `SOURCES` are the
registries of benchmarks and of the places they are read from.
"""

from input_pipeline.datasets import (
    DATASETS,
    SOURCES,
    Benchmark,
    DatasetSpec,
    Preprocessing,
    Source,
    SourceSettings,
    load_benchmark,
)
from input_pipeline.long_tail import (
    class_counts,
    long_tail_counts,
    long_tail_indices,
)
from input_pipeline.samplers import SAMPLERS, IndexStream, SamplerSpec
from input_pipeline.sources import (
    DataError,
    Split,
    decode_into_memory,
    load_cifar10_jpeg,
    load_list_split,
    read_list_file,
)

__all__ = [
    'Benchmark',
    'DATASETS',
    'DataError',
    'DatasetSpec',
    'IndexStream',
    'Preprocessing',
    'SAMPLERS',
    'SOURCES',
    'SamplerSpec',
    'Source',
    'SourceSettings',
    'Split',
    'class_counts',
    'decode_into_memory',
    'load_benchmark',
    'load_cifar10_jpeg',
    'load_list_split',
    'long_tail_counts',
    'long_tail_indices',
    'read_list_file',
]
