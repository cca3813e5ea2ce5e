"""Compression accounting: the columns of the Bayesian Compression tables.

See :mod:`bayescomp.compression.report`. Bit widths come from :mod:`bayescomp.bit_precision`.
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
