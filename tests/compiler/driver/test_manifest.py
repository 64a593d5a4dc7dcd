"""manifest.json and `spikeshield verify`: every artifact's SHA-256, checked."""

import hashlib
import json

import pytest
from typer.testing import CliRunner

from spikeshield.compiler.driver.cli import app
from spikeshield.compiler.driver.manifest import (
    file_digest,
    read_manifest,
    record_files,
    verify_directory,
    write_manifest,
)
from spikeshield.compiler.ir.errors import ModelLoadError

runner = CliRunner()


@pytest.fixture
def directory(tmp_path):
    out = tmp_path / "snn"
    (out / "plots").mkdir(parents=True)
    (out / "snn.ir").write_bytes(b"\x00graph" * 100)
    (out / "report.json").write_text('{"accuracy": 0.9}')
    (out / "plots" / "a.png").write_bytes(b"png")
    (out / ".report.json.tmp-1").write_text("a temporary, never listed")
    write_manifest(out)
    (out / ".report.json.tmp-1").unlink()
    return out


def test_manifest_lists_every_artifact_with_its_sha256(directory):
    files = read_manifest(directory)
    assert sorted(files) == ["plots/a.png", "report.json", "snn.ir"]
    expected = hashlib.sha256(b"\x00graph" * 100).hexdigest()
    assert files["snn.ir"] == {"sha256": expected, "bytes": 600}
    assert file_digest(directory / "snn.ir") == expected
    assert verify_directory(directory).intact


def test_verify_names_missing_altered_and_unlisted_files(directory):
    (directory / "report.json").write_text('{"accuracy": 0.99}')  # one digit changed
    (directory / "plots" / "a.png").unlink()
    (directory / "notes.txt").write_text("mine")
    result = verify_directory(directory)
    assert not result.intact
    assert result.altered == ["report.json"] and result.missing == ["plots/a.png"]
    assert result.ok == ["snn.ir"] and result.unlisted == ["notes.txt"]
    cli = runner.invoke(app, ["verify", str(directory)])
    assert cli.exit_code == 2
    assert "missing: plots/a.png; altered: report.json" in cli.output


def test_record_files_updates_the_manifest_after_a_later_command(directory, tmp_path):
    (directory / "robustness.json").write_text("{}")
    (directory / "report.json").write_text('{"accuracy": 0.5}')
    record_files(directory, [directory / "robustness.json", directory / "report.json"])
    assert verify_directory(directory).intact
    assert "robustness.json" in read_manifest(directory)
    bare = tmp_path / "bare"  # no manifest: nothing to update, none created
    bare.mkdir()
    (bare / "x").write_text("x")
    record_files(bare, [bare / "x"])
    assert not (bare / "manifest.json").exists()


def test_a_manifest_cannot_point_outside_its_directory_or_be_malformed(directory, tmp_path):
    (tmp_path / "secret").write_text("s")
    content = json.loads((directory / "manifest.json").read_text())
    content["files"]["../secret"] = {"sha256": file_digest(tmp_path / "secret"), "bytes": 1}
    (directory / "manifest.json").write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=r"entry '\.\./secret' is not a relative file name"):
        verify_directory(directory)
    (directory / "manifest.json").write_text("{not json")
    cli = runner.invoke(app, ["verify", str(directory)])
    assert cli.exit_code == 2 and "malformed" in cli.output
    (directory / "manifest.json").unlink()
    cli = runner.invoke(app, ["verify", str(directory)])
    assert cli.exit_code == 2 and "has no manifest.json" in cli.output


def test_verify_reports_temporaries_an_interrupted_write_left(directory):
    (directory / ".snn.nir.tmp-4242.nir").write_bytes(b"half an HDF5 file")
    assert "snn.nir" not in str(read_manifest(directory))
    cli = runner.invoke(app, ["verify", str(directory)])
    assert cli.exit_code == 2 and "left by an interrupted write: .snn.nir.tmp-4242.nir" in cli.output


def test_verify_fails_when_a_file_spikeshield_writes_lost_its_manifest_entry(directory):
    """Tampering with a file and deleting its entry must not pass as 'unlisted, unchecked'."""
    content = json.loads((directory / "manifest.json").read_text())
    del content["files"]["report.json"]
    (directory / "manifest.json").write_text(json.dumps(content))
    (directory / "report.json").write_text('{"accuracy": 1.0}')
    cli = runner.invoke(app, ["verify", str(directory)])
    assert cli.exit_code == 2 and "not in the manifest: report.json" in cli.output
    assert not verify_directory(directory).intact


def test_verify_passes_on_an_intact_directory(directory):
    cli = runner.invoke(app, ["verify", str(directory)])
    assert cli.exit_code == 0 and "all 3 files match manifest.json" in cli.output
