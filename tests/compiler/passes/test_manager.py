import pytest
import torch

from spikeshield.compiler.ir.errors import ConfigError, PassError
from spikeshield.compiler.passes.manager import PassManager
from spikeshield.compiler.passes.registry import PASSES
from tests.conftest import tiny_conv_graph


def test_records_name_params_time_and_history():
    manager = PassManager()
    graph = manager.run(tiny_conv_graph(), [("fold_batchnorm", {"mode": "fold"}),
                                            ("convert_relu_to_if", {"reset": "subtract"})])
    assert [r.name for r in manager.records] == ["fold_batchnorm", "convert_relu_to_if"]
    assert manager.records[1].params == {"reset": "subtract"} and manager.records[1].changed
    assert all(r.seconds >= 0 for r in manager.records)
    assert [p["name"] for p in graph.meta["passes"]] == ["fold_batchnorm", "convert_relu_to_if"]


def test_error_names_the_passes_already_run():
    manager = PassManager()
    with pytest.raises(ConfigError, match=r"convert_relu_to_if.*already run: fold_batchnorm"):
        manager.run(tiny_conv_graph(), [("fold_batchnorm", {}),
                                        ("convert_relu_to_if", {"reset": "bogus"})])


def test_unknown_pass():
    with pytest.raises(PassError, match="known passes"):
        PassManager().run_one(tiny_conv_graph(), "optimise_everything")
    assert {"fold_batchnorm", "convert_relu_to_if", "calibrate_thresholds", "fold_scales"} <= set(PASSES)
    assert torch.is_tensor(tiny_conv_graph().op("conv").weight)
