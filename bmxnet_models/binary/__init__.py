"""Binary (1-bit) building blocks from stock MXNet operators: quantizers and quantized layers."""
from bmxnet_models.binary.layers import PADDING_MODES, QConv2D, QDense, check_binary_padding
from bmxnet_models.binary.quantizers import (ACTIVATION_METHODS, SUPPORTED_BITS,
                                             WEIGHT_SCALING_MODES, ApproxSign, DetSign, Identity,
                                             MeanScaled, Quantizer, activation_quantizer,
                                             available_quantizers, check_activation, check_bits,
                                             check_weight_scaling, get_quantizer,
                                             register_quantizer, straight_through,
                                             weight_quantizer)

__all__ = [
    "QConv2D", "QDense",
    "Quantizer", "Identity", "DetSign", "ApproxSign", "MeanScaled", "straight_through",
    "register_quantizer", "get_quantizer", "available_quantizers",
    "activation_quantizer", "weight_quantizer", "check_bits", "check_weight_scaling",
    "check_activation", "check_binary_padding",
    "SUPPORTED_BITS", "WEIGHT_SCALING_MODES", "ACTIVATION_METHODS", "PADDING_MODES",
]
