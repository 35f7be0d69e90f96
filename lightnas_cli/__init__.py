"""LightNAS: hardware-aware neural architecture search on MXNet/Gluon."""

__version__ = "0.1.0"
