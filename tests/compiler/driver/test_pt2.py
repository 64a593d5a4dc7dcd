"""The .pt2 files spikeshield writes: recognised as its own, and the training record they carry."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from torch import nn

from spikeshield.compiler.driver.model_io import load_model
from spikeshield.compiler.driver.pt2 import (
    MARKER,
    export_pt2,
    is_spikeshield_pt2,
    robust_training_eps,
    training_record,
)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_training_record_round_trips_and_reaches_the_lowered_graph(tmp_path):
    path = tmp_path / "m.pt2"
    export_pt2(_tiny(), (1, 2, 2), path, training={"objective": "trades", "eps": 0.07})
    assert is_spikeshield_pt2(path)
    assert training_record(path) == {"objective": "trades", "eps": 0.07}
    assert load_model(path).meta["ann_training"]["eps"] == 0.07


def test_a_pt2_without_a_record_is_still_ours_but_records_nothing(tmp_path):
    path = tmp_path / "m.pt2"
    export_pt2(_tiny(), (1, 2, 2), path)
    assert is_spikeshield_pt2(path) and training_record(path) is None
    assert "ann_training" not in load_model(path).meta


@pytest.mark.parametrize("record, eps", [
    ({"objective": "trades", "eps": 0.07}, 0.07),  # what pruning and finetuning default to
    ({"eps": 0.05}, 0.05),  # a record without its objective: trust the eps
    ({"objective": "standard", "eps": 0.1}, None),  # not trained against attacks: eps unused
    ({"objective": "at", "eps": 0}, None),
    ({"objective": "trades", "eps": True}, None),
    ({"objective": "trades", "eps": "0.1"}, None),
    ({"objective": "trades"}, None),
    (None, None),
])
def test_robust_training_eps_is_read_only_from_a_robust_record(record, eps):
    assert robust_training_eps(record) == eps


def _foreign_pt2(path, extra: dict[str, str]) -> None:
    program = torch.export.export(_tiny().eval(), (torch.zeros(2, 1, 2, 2),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("extra, ours", [
    ({}, False),  # another tool's export: no marker at all
    ({MARKER: "{not json"}, True),  # a damaged marker: ours, but no record to trust
    ({MARKER: '{"written_by": "spikeshield", "training": [0.1]}'}, True),  # record of a wrong type
])
def test_foreign_or_damaged_markers_give_no_record(tmp_path, extra, ours):
    path = tmp_path / "m.pt2"
    _foreign_pt2(path, extra)
    assert is_spikeshield_pt2(path) is ours
    assert training_record(path) is None
    assert "ann_training" not in load_model(path).meta


def test_not_a_zip_is_neither(tmp_path):
    path = tmp_path / "m.pt2"
    path.write_bytes(b"not a zip")
    assert not is_spikeshield_pt2(path) and training_record(path) is None
    assert not zipfile.is_zipfile(path)
