"""Sharded evaluation (`eval --shard I/N`, then `eval --merge`): the merged report is the report
one process writes, count for count and sample for sample; shards of another SNN, other data or
other settings, and missing or repeated shards, are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.eval_shards import check_shards, parse_shard, read_shards
from spikeshield.compiler.driver.robustness import RobustnessConfig, evaluate_robustness
from spikeshield.compiler.ir.errors import ConfigError
from tests.compiler.driver.test_determinism import _without_timings

runner = CliRunner()


def _comparable(report: dict) -> dict:
    return {k: v for k, v in _without_timings(report).items() if k != "shards"}


def test_three_shards_merge_to_the_one_process_report(converted_lenet, mnist5k):
    snn, ann = converted_lenet.snn, converted_lenet.ann
    cfg = RobustnessConfig(preset="quick", samples=80, batch_size=16, curve_samples=16, seed=2)
    test = mnist5k.test
    one = evaluate_robustness(snn, ann, test, 10, cfg)
    records = [evaluate_robustness(snn, ann, test, 10, cfg, shard=parse_shard(f"{i}/3"))
               for i in (3, 1, 2)]  # any order
    merged = evaluate_robustness(snn, ann, test, 10, cfg, shards=records)
    assert _comparable(merged) == _comparable(one)
    assert 0 < one["snn"]["robust_accuracy"] < one["snn"]["clean_accuracy"]  # attacks broke some
    assert any(m["broken"] for m in one["snn"]["members"])
    for member in one["snn"]["members"]:  # which images each member broke, as indices
        assert len(member["broken_samples"]) == member["broken"]
        assert len(member["broken_at_pass"]) == member["broken"]  # and at which of its passes
        assert all(0 <= i <= 20 for i in member["broken_at_pass"])  # PGD-20: start + 20 steps
    broken = {i for m in one["snn"]["members"] for i in m["broken_samples"]}
    assert not broken & set(one["snn"]["robust_samples"])
    # Each shard attacked only its chunks (16 samples each, dealt round-robin to 3 shards).
    attacked = [int(r["snn"]["clean"].sum() + (~r["snn"]["clean"] & r["snn"]["attacked"].any(0))
                    .sum()) for r in records]
    assert sum(attacked) <= 80 and all(a > 0 for a in attacked)

    with pytest.raises(ConfigError, match=r"needs shards 1 to 3 once each; missing \[2\]"):
        evaluate_robustness(snn, ann, test, 10, cfg, shards=[records[0], records[1]])
    with pytest.raises(ConfigError, match=r"missing \[2\], repeated \[1\]"):
        check_shards([records[1], records[1], records[0]], records[0]["identity"])
    other = RobustnessConfig(preset="quick", samples=80, batch_size=16, curve_samples=16, seed=3)
    with pytest.raises(ConfigError, match=r"evaluated other settings \(seed\)"):
        evaluate_robustness(snn, ann, test, 10, other, shards=records)
    moved = snn.copy()
    first = moved.synaptic_nodes()[0]
    moved.op(first).bias = moved.op(first).bias + 1e-3
    with pytest.raises(ConfigError, match="evaluated another SNN"):
        evaluate_robustness(moved, ann, test, 10, cfg, shards=records)


def test_the_cli_shards_and_merges_a_compile_directory(trained_lenet, tmp_path):
    _, model = trained_lenet
    out = tmp_path / "c"
    result = runner.invoke(app, ["compile", str(model), "--out", str(out), "-T", "4",
                                 "--finetune", "none", "--robustness", "none", "--no-profile",
                                 "--n", "40"])
    assert result.exit_code == 0, result.output
    common = ["--n", "32", "--batch-size", "16", "--preset", "quick", "--seed", "1"]
    for i in (1, 2):
        result = runner.invoke(app, ["eval", str(out), "--shard", f"{i}/2", *common])
        assert result.exit_code == 0, result.output
    assert len(read_shards(tmp_path / "c.eval-shards")) == 2
    result = runner.invoke(app, ["eval", str(out), "--merge", *common])
    assert result.exit_code == 0, result.output
    assert "merged 2 shards" in result.output
    merged = json.loads((out / "robustness.json").read_text())
    result = runner.invoke(app, ["eval", str(out), *common])
    assert result.exit_code == 0, result.output
    single = json.loads((out / "robustness.json").read_text())
    assert _comparable(merged) == _comparable(single)
    result = runner.invoke(app, ["eval", str(out), "--shard", "3/2", *common])
    assert result.exit_code != 0 and "I must be between 1 and N" in result.output
    result = runner.invoke(app, ["eval", str(out), "--merge", "--n", "16", "--batch-size", "16",
                                 "--preset", "quick", "--seed", "1"])
    assert result.exit_code != 0 and "another number of samples" in result.output


def test_a_file_that_is_not_a_shard_is_named(tmp_path):
    torch.save({"format": "something else"}, tmp_path / "shard-1-of-1.pt")
    with pytest.raises(ConfigError, match="is not a spikeshield eval shard"):
        read_shards(tmp_path)
    with pytest.raises(ConfigError, match="holds no shard files"):
        read_shards(tmp_path / "empty")
