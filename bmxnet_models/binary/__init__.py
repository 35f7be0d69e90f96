"""Binary (1-bit) building blocks from stock MXNet operators: quantizers and quantized layers."""
from bmxnet_models.binary.layers import QConv2D
from bmxnet_models.binary.quantizers import (SUPPORTED_BITS, WEIGHT_SCALING_MODES, DetSign,
                                             Identity, MeanScaled, Quantizer,
                                             activation_quantizer, available_quantizers,
                                             check_bits, check_weight_scaling, get_quantizer,
                                             register_quantizer, straight_through,
                                             weight_quantizer)

__all__ = [
    "QConv2D",
    "Quantizer", "Identity", "DetSign", "MeanScaled", "straight_through",
    "register_quantizer", "get_quantizer", "available_quantizers",
    "activation_quantizer", "weight_quantizer", "check_bits", "check_weight_scaling",
    "SUPPORTED_BITS", "WEIGHT_SCALING_MODES",
]
