"""LightNAS package. Pins are the set verified together in ENVIRONMENT.md."""
import sys

from setuptools import find_packages, setup

if sys.version_info[:2] != (3, 11):
    sys.exit(f"LightNAS needs Python 3.11 (mxnet 1.9.1 does not run on "
             f"{sys.version.split()[0]}): create the environment with shell_scripts/setup.sh")

setup(
    name="lightnas",
    version="0.1.0",
    description="Hardware-aware neural architecture search on MXNet/Gluon: ENAS, FBNet, PIT, DMasking",
    python_requires="==3.11.*",
    packages=find_packages(include=["lightnas_cli", "lightnas_cli.*",
                                    "bmxnet_models", "bmxnet_models.*"]),
    install_requires=[
        "mxnet==1.9.1",
        "numpy==1.23.5",          # mxnet 1.9.1 uses np.bool, removed in numpy 1.24
        "autogluon.core==1.1.1",  # newest release that accepts numpy 1.23
        "autogluon.common==1.1.1",
        "typer==0.29.2",
        "omegaconf==2.4.0",
        "pyyaml==6.0.3",
        "mxboard==0.1.0",
        "protobuf==3.20.3",       # mxboard's generated code breaks with newer protobuf
        "pydot==4.0.1",
        "pillow==13.0.0",
        "rich==15.0.0",
        "scikit-learn==1.4.0",  # the offline `digits` data set
        "mnist1d==0.0.2.post1",  # MNIST-1D generated locally with make_dataset() (PIT's TCN)
    ],
    extras_require={
        # The tests check ONNX exports with onnx's reference evaluator and the event files
        # with TensorBoard's own reader and server, so both are part of the test set.
        "test": ["pytest==9.2.0", "onnx==1.14.1", "tensorboard==2.20.0"],
        # onnx 1.14.1 installs beside numpy 1.23.5 (onnxruntime does not: ENVIRONMENT.md).
        "onnx": ["onnx==1.14.1"],
        # tensorboard 2.21 forces protobuf>=6, which breaks mxboard; 2.20.0 reads its logs.
        "tensorboard": ["tensorboard==2.20.0"],
    },
    entry_points={"console_scripts": ["lightnas=lightnas_cli.cli:main"]},
)
