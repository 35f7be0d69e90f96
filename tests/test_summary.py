"""`lightnas summary` and the cost functions under it: hand counts and the MeliusNet paper."""
import json

import pytest
from mxnet.gluon import nn

from bmxnet_models.binary import QConv2D, QDense
from conftest import run_cli
from lightnas_cli import costs
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.summary import parse_input_shape, parse_options, summarize_model

# Bethge et al. 2020, "MeliusNet", ImageNet comparison table (model size in MB = 2**20 bytes,
# OPs = binary MACs / 64 + float MACs). MeliusNet-22's numbers are the issue's; its parameter
# count is larq-zoo's (larq_zoo MeliusNet22, 6,944,584).
PAPER = {22: (3.88, 2.08e8), 29: (5.10, 2.14e8), 42: (10.1, 3.25e8), 59: (17.4, 5.25e8)}


def test_layer_costs_by_hand():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, padding=1, use_bias=True, in_channels=2),        # 2*4*9 + 4 = 76
            nn.BatchNorm(in_channels=4),                                        # 2*4 = 8
            QConv2D(6, 3, strides=2, padding=1, in_channels=4, groups=2),       # 2*6*9 = 108
            nn.Flatten(),
            QDense(5, in_units=6 * 3 * 3),                                      # 54*5 = 270
            nn.Dense(3, in_units=5))                                            # 5*3 + 3 = 18
    net.initialize()
    layers = costs.profile(net, (2, 5, 5), norm_layers=True)
    assert [(c.path, c.layer_type, c.binary, c.params, c.macs) for c in layers] == [
        ("0", "conv2d", False, 76, 76 * 25),
        ("1", "batchnorm", False, 8, 0),
        ("2", "qconv2d", True, 108, 108 * 9),
        ("4", "qdense", True, 270, 270),
        ("5", "dense", False, 18, 18),
    ]
    assert layers[2].output_shape == (1, 6, 3, 3)
    # PLiNIO's convention (the default, what ENAS/PIT use) leaves BatchNorm out
    assert [c.layer_type for c in costs.profile(net, (2, 5, 5))] == \
        ["conv2d", "qconv2d", "qdense", "dense"]
    total = costs.summarize(layers)
    assert (total.params_binary, total.params_float) == (378, 102)
    assert (total.macs_binary, total.macs_float) == (972 + 270, 1900 + 18)
    assert total.memory_bytes == 378 / 8 + 102 * 4
    assert total.ops == (972 + 270) / 64 + 1918
    assert total.binary_fraction_params == 378 / 480
    assert total.memory_mib == total.memory_bytes / 2 ** 20


@pytest.mark.parametrize("size", [22, 29, 42, 59])
def test_meliusnet_matches_the_paper_within_3_percent(size):
    summary = summarize_model(f"meliusnet{size}", [3, 224, 224], 1000)
    size_mb, ops = PAPER[size]
    totals = summary.totals
    assert abs(totals.memory_mib - size_mb) / size_mb < 0.03, totals.memory_mib
    assert abs(totals.ops - ops) / ops < 0.03, totals.ops
    if size == 22:
        assert totals.params == 6_944_584
        assert totals.params_binary == 6_119_424  # 9 * 64 * (sum of dense/improve inputs)
        assert totals.macs_binary == 4_624_220_160


def test_summary_rows_and_json_shape():
    summary = summarize_model("meliusnet_custom:DTSI", [1, 16, 16], 7,
                              {"stem": "thumbnail", "base_channels": 8})
    data = json.loads(summary.to_json())
    assert data["model"] == "meliusnet_custom:DTSI" and data["classes"] == 7
    assert data["options"] == {"stem": "thumbnail", "base_channels": 8, "in_channels": 1}
    names = [row["name"] for row in data["layers"]]
    assert names[:3] == ["stem.0", "stage1.dense1.bn", "stage1.dense1.conv"]
    assert names[-1] == "output"
    skip = next(row for row in data["layers"] if row["name"] == "stage2.dense1.conv")
    # S: binary 1x1, 8 -> 8 channels at 8x8 (after the transition)
    assert skip["output_shape"] == [8, 8, 8] and skip["params_binary"] == 64
    assert skip["macs_binary"] == 64 * 64 and skip["memory_bytes"] == 8
    totals = data["totals"]
    assert totals["params"] == sum(r["params_binary"] + r["params_float"] for r in data["layers"])
    assert totals["macs_binary"] == sum(r["macs_binary"] for r in data["layers"])


def test_parsers_and_user_errors():
    assert parse_input_shape("3,224,224") == [3, 224, 224]
    assert parse_input_shape("1x8x8") == [1, 8, 8]
    assert parse_input_shape(None) is None
    assert parse_options(["stem=thumbnail", "base_channels=16", "grad_cancel=0.5"]) == \
        {"stem": "thumbnail", "base_channels": 16, "grad_cancel": 0.5}
    with pytest.raises(ConfigError, match="input-shape"):
        parse_input_shape("3,two,2")
    with pytest.raises(ConfigError, match="key=value"):
        parse_options(["stem"])
    with pytest.raises(ConfigError, match="no option"):
        summarize_model("meliusnet22", [3, 32, 32], 10, {"growth": 8})
    with pytest.raises(ArchitectureError, match="position 2"):
        summarize_model("meliusnet_custom:DQ", [3, 32, 32], 10)


def test_cli_summary_table_json_and_errors(tmp_path):
    result = run_cli(["summary", "meliusnet_custom:DTSI", "--input-shape", "3,32,32",
                      "--classes", "10", "-o", "stem=thumbnail"], tmp_path)
    assert result.returncode == 0, result.stderr
    for text in ("stage2.dense1.conv", "qconv2d", "Model size:", "OPs:", "Binarized fraction:"):
        assert text in result.stdout
    result = run_cli(["summary", "resnet_e18", "--input-shape", "1,8,8", "--classes", "4",
                      "-o", "base_channels=4", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "resnet_e18" and data["totals"]["params_binary"] > 0
    # (every malformed case is checked in-process in test_meliusnet.py; one goes end to end)
    bad = run_cli(["summary", "meliusnet_custom:DIT"], tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert "ends with a transition 'T' at position 3" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run_cli(["summary", "run:nope"], tmp_path)
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
