"""FBNet (Wu et al., CVPR 2019): differentiable search over per-layer candidate blocks with a
Gumbel-softmax relaxation and a measured latency table, on the zoo's FBNet and FBNet-SE spaces
(bmxnet_models/fbnet.py). Registers the `fbnet` method; its implementation (`method.py`) is
imported only when a run needs it."""
from lightnas_cli.search.base import register_method
from lightnas_cli.search.fbnet.config import FBNetSearchConfig

register_method("fbnet", schema=FBNetSearchConfig,
                implementation="lightnas_cli.search.fbnet.method:FBNetSearch")
