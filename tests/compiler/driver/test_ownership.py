"""Ownership that a file name cannot fake: spikeshield deletes or replaces only what its own
manifest or checkpoint record vouches for (by digest), compares resolved paths, and never writes
through a link someone planted. Each test here failed on 4b42d6f (checked by hand)."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.manifest import foreign_files, write_manifest
from spikeshield.compiler.driver.outputs import OutputError, claim_output, output_lock
from spikeshield.compiler.ir.atomic import atomic_directory, atomic_file
from spikeshield.compiler.ir.errors import ConfigError
from spikeshield.runtime.checkpoint import Checkpoint
from tests.compiler.driver.test_outputs import QUICK, _refused

runner = CliRunner()


def test_a_folder_named_like_the_checkpoint_survives_a_compile(trained_lenet, tmp_path):
    """Old code deleted OUT.checkpoint with whatever it held after a successful compile."""
    mine = tmp_path / "snn.checkpoint"
    mine.mkdir()
    (mine / "results.csv").write_text("a week of runs")
    result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out",
                                 str(tmp_path / "snn"), *QUICK])
    _refused(result, "is not a spikeshield checkpoint")
    assert (mine / "results.csv").read_text() == "a week of runs"


def test_discard_deletes_only_what_the_checkpoint_wrote(tmp_path, capsys):
    """Old code: `--resume X` deleted all of X when the job finished."""
    folder = tmp_path / "ck"
    first = Checkpoint(folder, "eval", {"n": 1})
    first.save("snn_ensemble", {"count": 3})
    (folder / "notes.txt").write_text("mine")
    resumed = Checkpoint(folder, "eval", {"n": 1}, resume=True)
    assert resumed.load("snn_ensemble") == {"count": 3}
    assert resumed.discard() == ["notes.txt"]
    assert sorted(p.name for p in folder.iterdir()) == ["job.json", "notes.txt"]
    assert "kept" in capsys.readouterr().err
    (folder / "notes.txt").unlink()
    assert Checkpoint(folder, "eval", {"n": 1}, resume=True).discard() == []
    assert not folder.exists()  # wholly its own: gone


def test_a_part_file_that_changed_since_it_was_written_is_kept(tmp_path):
    folder = tmp_path / "ck"
    checkpoint = Checkpoint(folder, "train", {})
    checkpoint.save("train", {"epoch": 1})
    (folder / "train.pt").write_bytes(b"someone else's bytes now")
    assert checkpoint.discard() == ["train.pt"]
    assert (folder / "train.pt").read_bytes() == b"someone else's bytes now"


@pytest.mark.parametrize("manifest", ["{}", json.dumps({"format": "spikeshield-manifest",
                                                         "files": {}})])
def test_a_manifest_file_alone_does_not_make_a_folder_spikeshields(trained_lenet, tmp_path,
                                                                    manifest):
    """Old code: any folder holding a file named manifest.json counted as an output, and the
    refusal advised --force, which deleted it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text(manifest)
    (mine / "data.bin").write_bytes(b"\x01" * 100)
    result = runner.invoke(app, ["compile", str(trained_lenet[1]), "--out", str(mine), *QUICK,
                                 "--force"])
    _refused(result, "holds files spikeshield did not write or that changed since (data.bin")
    assert (mine / "data.bin").read_bytes() == b"\x01" * 100


def test_a_file_added_to_a_real_output_is_named_and_protects_the_folder(tmp_path):
    out = tmp_path / "snn"
    out.mkdir()
    (out / "snn.ir").write_bytes(b"ir")
    write_manifest(out)
    assert foreign_files(out) == []
    (out / "my-notes.md").write_text("x")
    (out / "snn.ir").write_bytes(b"edited")
    assert foreign_files(out) == ["my-notes.md", "snn.ir"]
    with pytest.raises(OutputError, match="my-notes.md, snn.ir"), \
            claim_output(out, force=True, directory=True):
        pass


def test_inputs_are_compared_after_resolving_links_and_dotdots(trained_lenet, tmp_path):
    """Old code compared unresolved paths: `--out x/../d` or a model named through a link into d
    passed, and --force deleted the input."""
    d = tmp_path / "d"
    d.mkdir()
    model = d / "m.pt2"
    model.write_bytes(trained_lenet[1].read_bytes())
    write_manifest(d)
    (tmp_path / "x").mkdir()
    link = tmp_path / "model-link.pt2"
    link.symlink_to(model)
    for out, source in ((tmp_path / "x" / ".." / "d", model), (d, link)):
        result = runner.invoke(app, ["compile", str(source), "--out", str(out), *QUICK,
                                     "--force"])
        _refused(result, "would overwrite the input")
    assert model.read_bytes() == trained_lenet[1].read_bytes()


def test_an_atomic_write_never_follows_a_planted_link(tmp_path):
    """Old code wrote `.NAME.tmp-PID.SUFFIX` (the pid is in the lock file) through any link
    planted there, then chmod-ed the link's target to 0644."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o600)
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    planted = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    planted.symlink_to(victim)
    with atomic_file(target) as tmp:
        assert stat.S_IMODE(tmp.parent.stat().st_mode) == 0o700  # private staging folder
        tmp.write_text("{}")
    assert target.read_text() == "{}" and not target.is_symlink()
    assert victim.read_text() == "precious" and stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path):
    """Old code opened `.NAME.lock` through a link and truncated its target to the pid."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "snn"
    (tmp_path / ".snn.lock").symlink_to(victim)
    with pytest.raises(OutputError, match="is a symbolic link"), output_lock(out):
        pass
    assert victim.read_text() == "precious"


def test_a_kill_between_the_publish_renames_leaves_the_old_output_recoverable(tmp_path, capsys):
    """Old code: DIR missing, the old output hidden as .DIR.old-PID, and the next compile
    deleted it. Now the next claim puts it back (and the swap itself is one step on Linux)."""
    out = tmp_path / "snn"
    out.mkdir()
    (out / "snn.ir").write_bytes(b"old")
    write_manifest(out)
    hidden = tmp_path / ".snn.old-4242"
    os.replace(out, hidden)  # the state a SIGKILL between the two renames leaves
    with claim_output(out, force=True, directory=True):
        assert (out / "snn.ir").read_bytes() == b"old"
    assert "is back in place" in capsys.readouterr().err
    with atomic_directory(out) as tmp:
        (tmp / "snn.ir").write_bytes(b"new")
    assert (out / "snn.ir").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snn"]


def test_a_fresh_checkpoint_refuses_a_file_in_its_place(tmp_path):
    (tmp_path / "ck").write_text("not a folder")
    with pytest.raises(ConfigError, match="is not a spikeshield checkpoint"):
        Checkpoint(tmp_path / "ck", "train", {})


def test_a_resume_on_other_samples_under_the_same_spec_is_refused(tmp_path):
    """Old code keyed an eval checkpoint on the --data string: after the files behind mnist:DIR
    changed, --resume mixed both sets and reported 22.75% 'looks trustworthy'."""
    import torch

    from spikeshield.runtime.data import make_splits

    def splits(shift: int):
        images = (torch.arange(40 * 4, dtype=torch.int64).reshape(40, 1, 2, 2) + shift) % 256
        labels = torch.arange(40) % 10
        return make_splits("mnist", (images.to(torch.uint8), labels),
                           (images[:10].to(torch.uint8), labels[:10]), 10)

    first = Checkpoint(tmp_path / "ck", "eval", {"data": "mnist:DIR"})
    first.bind_data(splits(0).digest())
    first.save("snn_ensemble", {"count": 1})
    again = Checkpoint(tmp_path / "ck", "eval", {"data": "mnist:DIR"}, resume=True)
    again.bind_data(splits(0).digest())  # the same samples: fine
    changed = Checkpoint(tmp_path / "ck", "eval", {"data": "mnist:DIR"}, resume=True)
    with pytest.raises(ConfigError, match="was made on other data"):
        changed.bind_data(splits(1).digest())


def test_export_never_overwrites_companion_files_it_did_not_write(tmp_path):
    """Old code replaced OUT.json and snn_<target>.ir whatever they held."""
    from spikeshield.compiler.ir.serialize import save_graph
    from spikeshield.compiler.passes.convert_relu_to_if import convert_relu_to_if
    from tests.conftest import tiny_conv_graph

    graph = convert_relu_to_if(tiny_conv_graph()).graph
    graph.meta.update({"timesteps": 4, "encoding": "direct", "input_range": [0.0, 1.0]})
    source = save_graph(graph, tmp_path / "snn.ir")
    out = tmp_path / "deploy" / "snn.nir"
    out.parent.mkdir()
    (out.parent / "snn.nir.json").write_text('{"my": "notes"}')
    result = runner.invoke(app, ["export", str(source), "--out", str(out)])
    _refused(result, "is not the sidecar of a spikeshield nir export")
    assert (out.parent / "snn.nir.json").read_text() == '{"my": "notes"}'
    (out.parent / "snn.nir.json").unlink()
    (out.parent / "snn_loihi2.ir").write_text("my own file")
    result = runner.invoke(app, ["export", str(source), "--target", "loihi2", "--out", str(out)])
    _refused(result, "is not a spikeshield IR file")
    assert (out.parent / "snn_loihi2.ir").read_text() == "my own file"


def test_run_and_a_rewrite_of_its_source_exclude_each_other(tmp_path):
    """Old code: `run DIR` took no lock while `compile --force` rewrote DIR."""
    from spikeshield.compiler.driver.outputs import reading_lock

    source = tmp_path / "snn"
    source.mkdir()
    with reading_lock(source), reading_lock(source):  # readers share
        with pytest.raises(OutputError, match="in use by another spikeshield job"), \
                output_lock(source):
            pass
    with output_lock(source):
        # the writer's lock is this process's: a reader in another process is refused
        import subprocess
        import sys

        code = ("from spikeshield.compiler.driver.outputs import reading_lock\n"
                f"with reading_lock({str(source)!r}): pass\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=False)
        assert done.returncode != 0 and "is being written by another spikeshield job" in \
            done.stderr


@pytest.mark.parametrize("killed", ["before the renames", "before the manifest update"])
def test_a_kill_while_reports_are_published_leaves_a_directory_that_verifies(tmp_path,
                                                                            monkeypatch, killed):
    """Old code: a SIGKILL between eval's report renames and the manifest update left DIR
    refused by every command (its new reports did not match the manifest)."""
    from spikeshield.compiler.driver import manifest
    from spikeshield.compiler.driver.manifest import publish_files, verify_directory
    from spikeshield.compiler.ir import atomic

    out = tmp_path / "snn"
    out.mkdir()
    (out / "snn.ir").write_bytes(b"ir")
    (out / "robustness.json").write_bytes(b"old report")
    write_manifest(out)

    def kill(*args, **kwargs):
        raise KeyboardInterrupt  # what a SIGKILL leaves, minus the process

    if killed == "before the renames":
        monkeypatch.setattr(atomic, "atomic_files", kill)
    else:
        monkeypatch.setattr(manifest, "record_files", kill)
    with pytest.raises(KeyboardInterrupt):
        publish_files(out, {"robustness.json": b"new report", "robustness.md": b"# new"})
    result = verify_directory(out)
    assert result.intact, result.summary()
    monkeypatch.undo()
    publish_files(out, {"robustness.json": b"new report", "robustness.md": b"# new"})
    assert verify_directory(out).intact and foreign_files(out) == []
    assert "pending" not in json.loads((out / "manifest.json").read_text())
