"""`--method rex` and `--grid` through the CLI on the embedded digits model: exact, recorded, reused."""

import pytest

pytest.importorskip("PIL")
pytest.importorskip("safetensors")

from bdia.io.saved import load_inversion  # noqa: E402


@pytest.mark.parametrize(
    "extra",
    [
        ("--method", "rex", "--base", "midpoint"),
        ("--method", "rex", "--zeta", "0.95"),
        ("--grid", "karras"),
        ("--method", "rex", "--grid", "karras"),
    ],
)
def test_round_trip_is_exact_and_the_inversion_remembers_method_and_grid(bdia_cli, tmp_path, digit_png, extra):
    inv = tmp_path / "inv.safetensors"
    code, out, err = bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 6, *extra, "-o", inv, "-q")
    assert code == 0, err
    saved = load_inversion(inv)
    assert saved.grid_kind == ("karras" if "karras" in extra else "diffusers")
    if "rex" in extra:
        assert saved.solver["name"] == "rex" and saved.inversion.nfe > 6
        assert saved.solver["zeta"] == (0.95 if "0.95" in extra else 0.9)
    code, out, err = bdia_cli("reconstruct", inv, "-o", tmp_path / "rec.png", "--image", digit_png, "-q")
    assert code == 0, err
    assert "100.0% of pixels identical" in out
    code, out, err = bdia_cli("edit", inv, "--prompt", "8", "-o", tmp_path / "eight.png", "-q")
    assert code == 0, err and (tmp_path / "eight.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--method", "edict", "--zeta", "0.5"), "--zeta applies to --method rex"),
        (("--base", "rk4"), "--base applies to --method rex"),
        (("--method", "rex", "--zeta", "0"), "zeta"),
        (("--grid", "banana"), "invalid choice"),
    ],
)
def test_rex_and_grid_options_are_checked_before_any_work(bdia_cli, tmp_path, digit_png, args, message):
    code, out, err = bdia_cli("invert", digit_png, "--prompt", "3", *args, "-o", tmp_path / "x.safetensors")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_edit_of_a_saved_inversion_refuses_grid_and_rex_options(bdia_cli, tmp_path, digit_png):
    inv = tmp_path / "inv.safetensors"
    assert bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 4, "-o", inv, "-q")[0] == 0
    code, out, err = bdia_cli("edit", inv, "--prompt", "8", "--grid", "karras", "-o", tmp_path / "e.png")
    assert code == 2 and "--grid" in err
