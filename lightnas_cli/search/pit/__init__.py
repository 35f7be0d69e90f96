"""PIT (Pruning In Time; Risso et al. 2021, successor library PLiNIO): mask-based search of
channels, receptive fields and dilations, with pruned export and the `pit` search method."""
from lightnas_cli.search.pit.batchnorm import PITBatchNorm
from lightnas_cli.search.pit.binarizer import binarize
from lightnas_cli.search.pit.conv1d import PITConv1D
from lightnas_cli.search.pit.conv2d import PITConv2D
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.dilation_masker import PITDilationMasker, PITFrozenDilationMasker
from lightnas_cli.search.pit.features_calculator import (ConcatFeaturesCalculator,
                                                         ConstFeaturesCalculator,
                                                         FeaturesCalculator,
                                                         FlattenFeaturesCalculator,
                                                         MaskerFeaturesCalculator)
from lightnas_cli.search.pit.features_masker import PITFeaturesMasker, PITFrozenFeaturesMasker
from lightnas_cli.search.pit.model import PITModel
from lightnas_cli.search.pit.regularizers import REGULARIZERS
from lightnas_cli.search.pit.timestep_masker import PITFrozenTimestepMasker, PITTimestepMasker

__all__ = [
    "binarize", "PITFeaturesMasker", "PITFrozenFeaturesMasker", "PITTimestepMasker",
    "PITFrozenTimestepMasker", "PITDilationMasker", "PITFrozenDilationMasker", "PITConv1D",
    "PITConv2D", "PITDense", "PITBatchNorm", "FeaturesCalculator", "ConstFeaturesCalculator",
    "MaskerFeaturesCalculator", "ConcatFeaturesCalculator", "FlattenFeaturesCalculator",
    "PITModel", "REGULARIZERS",
]

# Registers the "pit" search method.
from lightnas_cli.search.pit.method import PitSearch  # noqa: E402,F401

__all__.append("PitSearch")
