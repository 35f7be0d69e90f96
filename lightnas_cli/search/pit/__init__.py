"""PIT (Pruning In Time; Risso et al. 2021, successor library PLiNIO): mask-based search of
channels, receptive fields and dilations, with pruned export. One searchable layer or masker per
module (conv1d.py, conv2d.py, dense.py, batchnorm.py, features_masker.py, timestep_masker.py,
dilation_masker.py, binarizer.py), the conversion of a network in graph.py / model.py, all masks
of a model in one parameter (bank.py), the regularizers (regularizers.py), the search step's
hooks for the shared epoch loop (step.py) and the search method in method.py (imported only
when a run needs it). Registers the `pit` method."""
from lightnas_cli.search.base import register_method
from lightnas_cli.search.pit.config import PitSearchConfig

register_method("pit", schema=PitSearchConfig,
                implementation="lightnas_cli.search.pit.method:PitSearch")
