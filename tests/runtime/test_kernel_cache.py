"""The kernel cache: a library is imported only while its bytes match the digest recorded when it
was built; a build lock left by a killed build is cleared; a cache others may write is refused and
the dense path runs. The compiler is replaced by a stub here (a real build takes a minute; the
sparse-convolution tests build the real kernel through the same code)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spikeshield.runtime import kernel_cache


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A private cache, a dummy source, and a stub compiler that records what it was asked."""
    monkeypatch.setenv("SPIKESHIELD_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "k.cpp"
    source.write_text("// kernel\n")
    calls = {"built": 0, "imported": []}

    def fake_load(name, sources, extra_cflags, build_directory, verbose):
        folder = Path(build_directory)
        assert not (folder / "lock").exists(), "torch would wait on a stale lock forever"
        (folder / f"{name}.so").write_bytes(b"\x7fELF built")
        calls["built"] += 1
        return "module"

    import torch.utils.cpp_extension

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(kernel_cache, "_import",
                        lambda name, library: calls["imported"].append(library) or "cached")
    return source, calls


def test_a_library_is_built_once_then_loaded_from_the_cache(cache):
    source, calls = cache
    assert kernel_cache.load_kernel("k", source, []) == "module"
    assert kernel_cache.load_kernel("k", source, []) == "cached"
    assert calls["built"] == 1 and len(calls["imported"]) == 1
    folder = kernel_cache.kernel_folder("k", source)
    assert oct(os.stat(folder).st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("tamper", [
    lambda so: so.write_bytes(so.read_bytes()[:4]),  # truncated: importing it died with SIGBUS
    lambda so: so.write_bytes(b"\x7fELF planted, with a constructor"),
])
def test_a_library_whose_bytes_changed_is_rebuilt_never_loaded(cache, capsys, tamper):
    """Old code loaded whatever torch_extensions held (a planted library ran its constructor)."""
    source, calls = cache
    kernel_cache.load_kernel("k", source, [])
    tamper(kernel_cache.kernel_folder("k", source) / "k.so")
    assert kernel_cache.load_kernel("k", source, []) == "module"
    assert calls["built"] == 2 and calls["imported"] == []
    assert "changed since it was built; rebuilding it" in capsys.readouterr().err


def test_a_build_lock_left_by_a_killed_build_is_cleared_with_a_note(cache, capsys):
    """Old code: a SIGKILL during the first build left torch's lock, and every later pruned-model
    job waited on it forever, printing nothing."""
    source, calls = cache
    folder = kernel_cache.kernel_folder("k", source)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "lock").write_text("")
    assert kernel_cache.load_kernel("k", source, []) == "module"
    assert "a build lock left by an interrupted build" in capsys.readouterr().err


def test_a_cache_others_may_write_is_refused_and_the_reason_returned(cache):
    source, calls = cache
    root = kernel_cache.cache_root()
    root.mkdir(parents=True)
    root.chmod(0o777)
    reason = kernel_cache.load_kernel("k", source, [])
    assert isinstance(reason, str) and "not a folder private to this user" in reason
    assert calls["built"] == 0 and calls["imported"] == []
