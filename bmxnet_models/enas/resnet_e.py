"""ENAS view of ResNet-E: the searchable block and the supernet constructors.

The block is implemented once, in `bmxnet_models.resnet_e`: `BasicBlockEnas` called with
``bits=`` builds a plain block and without it an `EnasUnit` choosing 1 or 32 bits with shared
weights (seed 000). A supernet is ``resnet_e18(enas=True, ...)``.
"""
from bmxnet_models.resnet_e import BasicBlockE, BasicBlockEnas, resnet_e18, resnet_e34

__all__ = ["BasicBlockEnas", "BasicBlockE", "resnet_e18", "resnet_e34"]
