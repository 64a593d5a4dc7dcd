"""Byte counts of the storage formats on matrices whose layout is known."""

from __future__ import annotations

import torch

from spikeshield.compiler.ir.graph import Graph
from spikeshield.compiler.ir.ops import Input, Linear, Output
from spikeshield.runtime.storage import graph_storage, index_bits, layer_storage, matrix_bytes


def test_index_widths():
    assert [index_bits(v) for v in (0, 255, 256, 65535, 65536)] == [8, 8, 16, 16, 32]


def test_known_matrix_in_every_format():
    # 4 x 300 with 12 nonzeros. Columns 0..299 need 16-bit indices, row pointers (<= 12) 8-bit.
    weight = torch.zeros(4, 300)
    weight[torch.arange(4).repeat(3), torch.tensor([0, 1, 2] * 4) * 97] = 1.5
    info = layer_storage(weight)
    assert info["weights"] == 1200 and info["nonzeros"] == 12
    assert info["csr_column_index_bits"] == 16 and info["csr_row_pointer_bits"] == 8
    assert info["bytes"]["int8"] == {"dense": 1200, "csr": 12 + 24 + 5, "bitmap": 150 + 12}
    assert info["bytes"]["fp16"] == {"dense": 2400, "csr": 24 + 24 + 5, "bitmap": 150 + 24}
    assert info["bytes"]["fp32"] == {"dense": 4800, "csr": 48 + 24 + 5, "bitmap": 150 + 48}
    assert info["best_format"] == {"fp32": "csr", "fp16": "csr", "int8": "csr"}


def test_dense_matrix_is_best_stored_dense_and_bitmap_wins_in_between():
    assert layer_storage(torch.ones(8, 8))["best_format"]["int8"] == "dense"
    # Half dense at int8: CSR (1 + 1 byte per nonzero) ties dense, the bitmap (1/8 + 0.5) wins.
    half = torch.ones(8, 8)
    half[:, ::2] = 0
    sizes = matrix_bytes(8, 8, 32, 1)
    assert sizes == {"dense": 64, "csr": 32 + 32 + 9, "bitmap": 8 + 32}
    assert layer_storage(half)["best_format"]["int8"] == "bitmap"


def test_graph_totals_and_reduction():
    g = Graph("two")
    g.add("input", Input((100,)))
    w1 = torch.zeros(50, 100)
    w1[0, :10] = 1.0
    g.add("fc1", Linear(w1, torch.zeros(50), mask=(w1 != 0).float()), ["input"])
    g.add("fc2", Linear(torch.ones(10, 50)), ["fc1"])
    g.add("output", Output(), ["fc2"])
    totals = graph_storage(g.validate())["totals"]
    assert totals["weights"] == 5500 and totals["nonzeros"] == 510
    assert totals["weight_reduction"] == 5500 / 510
    assert totals["other_parameters"] == 50  # fc1's bias
    fp32 = totals["bytes"]["fp32"]
    assert fp32["dense"] == 22000
    # fc1 best in CSR: 10 values * 4 + 10 column indices * 1 + 51 row pointers * 1; fc2 dense.
    assert fp32["best_per_layer"] == 40 + 10 + 51 + 2000
