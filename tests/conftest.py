import pytest

from bdia.runtime import torch_threads


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models are dominated by per-op overhead: on a busy 2-core machine extra threads spin-wait."""
    with torch_threads(1):
        yield


@pytest.fixture
def bdia_cli(monkeypatch, capsys):
    """Run ``bdia ARGS`` in-process with the image commands registered; returns (code, stdout, stderr).

    Usage mistakes (argparse's exit) count as return codes, as they do for the installed command.
    """
    import bdia.cli

    monkeypatch.setattr(
        bdia.cli,
        "COMMAND_MODULES",
        ["bdia.cli.invert", "bdia.cli.reconstruct", "bdia.cli.edit", "bdia.cli.generate", "bdia.cli.demo"],
    )

    def run(*args):
        try:
            code = bdia.cli.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def digit_png(tmp_path):
    """A held-out 3 from the digits data as a PNG file."""
    from PIL import Image

    from bdia.digits import load_digits

    test = load_digits("test")
    path = tmp_path / "three.png"
    Image.fromarray(test.images[int((test.labels == 3).nonzero()[0][0]), 0].numpy()).save(path)
    return path
