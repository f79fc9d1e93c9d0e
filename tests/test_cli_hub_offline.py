"""A hub id without network is refused at once in one line (exit 2), not after the downloader's retries; the
libraries' own warnings stay out of the command's output unless --verbose."""

import warnings
from pathlib import Path

import pytest

from bdia.cli import main
from bdia.io import loading

SCENE = str(Path(__file__).resolve().parents[1] / "examples" / "images" / "scene.png")
MADE_UP = "nobody-here/no-such-bdia-model"


def _invert(tmp_path, capsys, *extra):
    code = main(["invert", SCENE, "--model", MADE_UP, "-o", str(tmp_path / "x.safetensors"), "-q", *extra])
    return code, capsys.readouterr().err


def test_offline_and_not_cached_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(loading, "hub_reachable", lambda *a, **k: pytest.fail("offline: no network check"))
    code, err = _invert(tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1, err  # the error, and no library warning before it
    assert MADE_UP in err and "HF_HUB_OFFLINE" in err and "local folder" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_no_network_says_so_before_any_download(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    from diffusers import DiffusionPipeline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(DiffusionPipeline, "load_config", lambda *a, **k: pytest.fail("tried to download"))
    code, err = _invert(tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"no network to download '{MADE_UP}': pass a local folder, or set HF_HUB_OFFLINE=1" in err


def test_the_network_check_is_quick_and_honest(monkeypatch):
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    assert loading.hub_reachable(timeout=1.0) is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not loading.hub_offline()


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_only_with_verbose(verbose, tmp_path, monkeypatch, capsys):
    def fake_index(name, revision):
        warnings.warn_explicit(
            "a deprecated argument of the download library",
            UserWarning,
            filename=str(Path("site-packages") / "huggingface_hub" / "file_download.py"),
            lineno=1,
        )
        warnings.warn("bdia's own warning", stacklevel=2)
        raise loading.NoNetworkError(f"no network to download {name!r}")

    monkeypatch.setattr(loading, "_hub_config", fake_index)
    code, err = _invert(tmp_path, capsys, *(["--verbose"] if verbose else []))
    assert code == 2 and "bdia's own warning" in err
    assert ("deprecated argument of the download library" in err) == verbose
