"""Compression: the accounting of the Bayesian Compression tables and the real ``.bcz`` file.

* :mod:`bayescomp.compression.report`: the Table 1 columns (bit widths come from
  :mod:`bayescomp.bit_precision`).
* :mod:`bayescomp.compression.quantize`: the pruned, rounded network that is evaluated.
* :mod:`bayescomp.compression.codec`: writes and reads ``.bcz`` files (``save``, ``load``); the
  format is described in ``bayescomp/compression/README.md``.
"""

from bayescomp.compression.report import (
    CompressionReport,
    LayerStorage,
    architecture_string,
    compression_report,
    fast_prediction_ratio,
    huffman_code_lengths,
    kept_architecture,
    layer_storage_bits,
    max_compression_ratio,
    pruned_dense_shape,
    pruning_ratio,
    relative_index_diffs,
    structured_masks,
    unstructured_pruning_ratio,
)

__all__ = (
    "CompressionReport",
    "LayerStorage",
    "architecture_string",
    "compression_report",
    "fast_prediction_ratio",
    "huffman_code_lengths",
    "kept_architecture",
    "layer_storage_bits",
    "max_compression_ratio",
    "pruned_dense_shape",
    "pruning_ratio",
    "relative_index_diffs",
    "structured_masks",
    "unstructured_pruning_ratio",
)
