"""The Editor over backends, the solver factory, the shared policy, and the CLI's outputs and reports
(digits model, no diffusers needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import bdia
from bdia import Schedule
from bdia.digits import load_classifier, load_digits, to_model
from bdia.editing import Backend, Editor
from bdia.io.saved import load_inversion, save_inversion
from bdia.runtime import choose_device, prompt_list, resolve_dtype
from bdia.solvers import BDIA, DDIM, EDICT, Heun, Solver, make_solver

pytest.importorskip("PIL")
pytest.importorskip("safetensors")

pytestmark = pytest.mark.usefixtures("single_thread")


# ----- a new backend fits the one Editor -----------------------------------------------------------------
class ToyBackend(Backend):
    """4x4 one-channel "images" that are their own latents; the prompt's length scales a linear eps model.

    Written from the Backend table alone, it exercises the interface a flow-model backend would fill.
    """

    latent_name = "pixel"
    lossy_codec = False
    default_guidance = 1.0

    def __init__(self):
        self.schedule = Schedule.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear"})
        self.eps_model = lambda x, t, cond: 0.3 * x * (1.0 + cond.to(x)[:, None, None, None])

    device = property(lambda self: torch.device("cpu"))
    dtype = property(lambda self: torch.float32)
    default_size = property(lambda self: (4, 4))

    def load_images(self, images, size=None):
        return torch.stack(list(images)) * 2 - 1

    def encode(self, pixels):
        return pixels.float()

    def decode(self, latents, size):
        return latents.clamp(-1, 1)

    def conditions(self, prompts, negatives, height, width):
        cond = torch.tensor([float(len(p)) for p in prompts])
        return cond, torch.zeros_like(cond) if negatives is None else torch.tensor([float(len(p)) for p in negatives])

    def latent_shape(self, batch, height, width):
        return (batch, 1, height, width)

    def record(self):
        return {"id": "toy", "class": "ToyBackend", "dtype": "float32"}

    def check_record(self, record):
        if record.get("id") != "toy":
            raise ValueError(f"not a toy inversion: {record.get('id')!r}")


def test_a_new_backend_needs_no_new_editor(tmp_path):
    editor = Editor(ToyBackend(), progress=False)
    images = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    inv = editor.invert(images, "ab", guidance_scale=2.0, num_steps=12)
    assert inv.inversion.nfe == 12 and inv.image_size == (4, 4)
    rec = editor.reconstruct(inv)
    assert rec.latent_error < 1e-12 and rec.info["identical"] == 1.0
    edit = editor.edit(inv, "abcdef")
    assert (edit.latents - rec.latents).abs().max() > 1e-3  # another condition is another image
    save_inversion(inv, tmp_path / "toy.safetensors")
    again = editor.reconstruct(load_inversion(tmp_path / "toy.safetensors"))
    assert torch.equal(again.latents, rec.latents)
    errors = editor.pixel_errors(images, rec, inv)
    assert errors["max_error"] == 0 and errors["identical"] == 1.0 and "vae_roundtrip" not in errors
    generated = editor.generate("ab", num_steps=6, num_images=3, method="edict")
    with pytest.raises(ValueError, match="edict takes p, alternate; got gamma"):  # not silently ignored
        editor.invert(images, "ab", num_steps=6, method="edict", gamma=0.5)
    assert generated.nfe == 12 and len(generated.images) == 3 and generated.images[0].mode == "L"


def test_the_digits_editor_inverts_exactly_in_every_model_dtype():
    """BDIA's inversion is exact whatever the model's dtype: the digits UNet runs in float16 and bfloat16."""
    test = load_digits("test")
    images = test.images[:2].float() / 255
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        editor = Editor.from_pretrained("digits", torch_dtype=dtype, device="cpu", progress=False)
        assert editor.backend.dtype == dtype
        inv = editor.invert(images, [str(int(c)) for c in test.labels[:2]], num_steps=5)
        rec = editor.reconstruct(inv)
        assert rec.latent_error < 1e-10 and rec.info["identical"] == 1.0, dtype
        assert inv.model["dtype"] == str(dtype).removeprefix("torch.")


# ----- the one solver factory ------------------------------------------------------------------------------
def test_make_solver_by_name_and_config_refuses_what_a_method_does_not_take():
    assert isinstance(make_solver("ddim"), DDIM) and isinstance(make_solver("HEUN"), Heun)
    assert make_solver("bdia", gamma=0.5, p=None).gamma == 0.5
    edict = make_solver({"name": "edict", "p": 0.9, "alternate": True}, state_dtype=torch.float32)
    assert isinstance(edict, EDICT) and edict.p == 0.9 and edict.state_dtype == torch.float32
    assert make_solver(BDIA(0.25).config()).config() == BDIA(0.25).config()
    solver = BDIA(0.3)
    assert make_solver(solver) is solver
    with pytest.raises(ValueError, match="ddim takes no parameters; got gamma"):
        make_solver("ddim", gamma=0.5)
    with pytest.raises(ValueError, match="edict takes p, alternate; got gamma"):
        make_solver("edict", gamma=0.5)
    with pytest.raises(ValueError, match="got state_dtype"):  # a hostile config cannot pass base keywords
        make_solver({"name": "bdia", "state_dtype": "float16"})
    with pytest.raises(ValueError, match="unknown method 'dpm'"):
        make_solver("dpm")
    with pytest.raises(ValueError, match="ready-made"):
        make_solver(solver, gamma=0.5)
    assert bdia.make_solver is make_solver and isinstance(bdia.solvers.SOLVERS["bdia"](), Solver)


def test_saved_inversions_rebuild_their_solver_through_the_factory():
    from bdia.io.saved import solver_from_config

    assert solver_from_config({"name": "bdia", "gamma": 0.5, "forward": "euler"}).gamma == 0.5
    with pytest.raises(ValueError, match="cannot rebuild"):
        solver_from_config({"name": "bdia", "gamma": 0.5, "state_dtype": "float64"})


# ----- shared policy ----------------------------------------------------------------------------------------
def test_policy_devices_dtypes_and_prompts():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(None).type in ("cpu", "cuda", "mps")
    for bad, match in (("banana", "unknown device"), ("meta", "not supported")):
        with pytest.raises(ValueError, match=match):
            choose_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            choose_device("cuda")
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("auto") is None
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")
    assert prompt_list("a", 3) == ["a", "a", "a"] and prompt_list(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        prompt_list(["a", "b"], 3)


def test_load_editor_leaves_the_thread_count_alone():
    from bdia.editing import load_editor

    before = torch.get_num_threads()
    load_editor("digits", device="cpu", progress=False)
    assert torch.get_num_threads() == before


def test_analytic_is_reachable_after_import_bdia():
    code = "import bdia, sys; print(bdia.analytic.__name__, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["bdia.analytic", "False"]


# ----- outputs ----------------------------------------------------------------------------------------------


def test_reconstruct_measures_the_file_on_disk(bdia_cli, tmp_path, digit_png):
    inv = tmp_path / "inv.safetensors"
    assert bdia_cli("invert", digit_png, "--prompt", "3", "--steps", 6, "-o", inv, "-q")[0] == 0
    code, out, err = bdia_cli("reconstruct", inv, "-o", tmp_path / "rec.png", "--image", digit_png, "-q")
    assert code == 0 and "written file against the image file" in out and "100.0% of pixels identical" in out
    code, out, err = bdia_cli("reconstruct", inv, "-o", tmp_path / "rec.webp", "--image", digit_png, "-q")
    assert code == 0 and "lossy" in err
    max_error = int(out.split("max error ")[1].split("/")[0])
    from PIL import Image

    with Image.open(tmp_path / "rec.webp") as im:
        on_disk = np.asarray(im.convert("L")).astype(int)
    with Image.open(digit_png) as im:
        original = np.asarray(im).astype(int)
    assert max_error == np.abs(on_disk - original).max() > 0  # what is on disk, not the image in memory


def test_generate_writes_in_chunks_and_says_how_many(bdia_cli, tmp_path, monkeypatch):
    from bdia.cli import generate

    monkeypatch.setattr(generate, "CHUNK", 3)
    code, out, err = bdia_cli(
        "generate", "--prompt", "7", "--steps", 4, "--num-images", 7, "-o", tmp_path / "g.png", "-q"
    )
    assert code == 0 and "generated 7 image(s)" in out and "wrote 7 image(s)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"g_{k}.png" for k in range(7))
    from PIL import Image

    with Image.open(tmp_path / "g_0.png") as a, Image.open(tmp_path / "g_3.png") as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # each chunk has its own noise

    calls = []
    real = Editor.generate

    def fail_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Editor, "generate", fail_second)
    code, out, err = bdia_cli(
        "generate", "--prompt", "7", "--steps", 4, "--num-images", 7, "-o", tmp_path / "h.png", "-q"
    )
    assert code == 2 and "wrote 3 of 7 image(s)" in err and "disk full" in err
    assert sorted(p.name for p in tmp_path.glob("h_*")) == ["h_0.png", "h_1.png", "h_2.png"]


def test_generate_in_half_precision_still_makes_the_digit(bdia_cli, tmp_path):
    path = tmp_path / "seven.png"
    code, out, err = bdia_cli("generate", "--prompt", "7", "--steps", 10, "--dtype", "bfloat16", "-o", path, "-q")
    assert code == 0, err
    from PIL import Image

    with Image.open(path) as im:
        pixels = torch.from_numpy(np.asarray(im).copy())
    with torch.no_grad():
        assert int(load_classifier()(to_model(pixels)[None, None]).argmax()) == 7


def test_a_16_bit_digit_reads_as_its_8_bit_self(tmp_path, digit_png):
    """16-bit files are scaled by their depth (not clipped at 255 into a white square)."""
    import warnings

    from PIL import Image

    with Image.open(digit_png) as im:
        arr8 = np.asarray(im).astype(np.uint16)
    Image.fromarray(arr8 * 257).save(tmp_path / "deep.png")  # 16-bit grayscale, same levels
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    backend = Editor.from_pretrained("digits", device="cpu", progress=False).backend
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact: no conversion note, no "mostly light" advice
        deep = backend.load_images(str(tmp_path / "deep.png"))
    assert torch.equal(deep, backend.load_images(str(digit_png)))
