"""DMasking (seed 004, "DmaskingNAS"; U-Boost NAS, arXiv 2203.12412): FBNetV2 channel masking
(Wan et al. 2020) of a plain conv/dense stack given as `arch_def`, searched with
L = L_data + λ · L_latency, the latency being the `systolic` cost model with a smooth
ceiling. The space is parsed in space.py, the masked supernet lives in supernet.py and the
search method in method.py (imported only when a run needs it). Registers `dmasking`."""
from lightnas_cli.search.base import register_method
from lightnas_cli.search.dmasking.config import DmaskingSearchConfig

register_method("dmasking", schema=DmaskingSearchConfig,
                implementation="lightnas_cli.search.dmasking.method:DMaskingSearch")
