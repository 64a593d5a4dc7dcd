import pytest
import torch

from spikeshield.compiler.ir.errors import ModelLoadError
from spikeshield.compiler.ir.serialize import load_graph, save_graph
from spikeshield.runtime.executor import GraphExecutor
from tests.conftest import tiny_conv_graph


def test_save_load_round_trip_reproduces_outputs(tmp_path):
    graph = tiny_conv_graph()
    graph.meta["timesteps"] = 8
    path = save_graph(graph, tmp_path / "g.ir")
    back = load_graph(path)
    x = torch.rand(3, 1, 6, 6)
    torch.testing.assert_close(GraphExecutor(back)(x), GraphExecutor(graph)(x), rtol=0, atol=0)
    assert back.meta["timesteps"] == 8


def test_file_is_safetensors_not_pickle(tmp_path):
    path = save_graph(tiny_conv_graph(), tmp_path / "g.ir")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8:9] == b"{" and header_len < path.stat().st_size
    assert b"\x80\x04" not in path.read_bytes()[:2]  # no pickle protocol header


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"\x00" * 64])
def test_corrupt_file_is_a_typed_error(tmp_path, content):
    path = tmp_path / "bad.ir"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="bad.ir"):
        load_graph(path)


def test_missing_file_is_a_typed_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no IR file"):
        load_graph(tmp_path / "nope.ir")
