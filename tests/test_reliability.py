"""Bad input is refused with a clear error before any work, and outputs are written safely (issue 14).

Each test reproduces one reported failure: output files (mode, stale temporaries, long names),
solver parameters whose amplification overflowed or went unchecked, unreadable or silently
mis-scaled images, and models whose weights are pickles.
"""

import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bdia
from bdia.analytic import Gaussian
from bdia.io import atomic_path, check_writable, write_text

SD = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)
SCHEDULE = bdia.Schedule.from_config(SD)
IO_PY = Path(bdia.__file__).parent / "io" / "files.py"


# ----- output files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_of_a_new_file_even_when_the_writer_makes_it_private(tmp_path, umask):
    from safetensors.torch import save_file  # writes its files 0600

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "x.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, os.fspath(tmp))
        write_text(tmp_path / "y.txt", "text")
    finally:
        os.umask(old)
    for name in ("x.safetensors", "y.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_temporary_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.png"
    child = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("bdia_io", {os.fspath(IO_PY)!r})
        io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)
        with io.atomic_path({os.fspath(target)!r}) as tmp:
            tmp.write_bytes(b"partial")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        left = Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert left.exists() and left.parent == tmp_path and left.name.startswith(".")
    assert not target.exists()
    # A live writer's temporary (this process's) is kept; the dead one's is removed.
    with atomic_path(target, overwrite=True) as mine:
        mine.write_bytes(b"png")
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_bytes(b"second")
        assert mine.exists()
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_legal_long_name_is_written_and_an_illegal_one_refused_up_front(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = "n" * (limit - 4) + ".png"
    write_text(tmp_path / longest, "ok")
    assert (tmp_path / longest).read_text() == "ok"
    with pytest.raises(ValueError, match="bytes.*shorter name"):
        check_writable(tmp_path / ("n" * limit + ".png"))
    with pytest.raises(ValueError, match="shorter name"):
        write_text(tmp_path / ("n" * limit + ".png"), "never")


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(IsADirectoryError, match="is a (directory|folder)"):
        check_writable(tmp_path / "folder", overwrite=True)
    with pytest.raises(IsADirectoryError, match="is a (directory|folder)"):
        check_writable(tmp_path / "folder")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.png")
    assert check_writable(tmp_path / "new" / "deeper" / "out.png").name == "out.png"  # made when written


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="no write permission"):
            check_writable(ro / "out.png")
    finally:
        ro.chmod(0o755)


# ----- solver parameters (items 4, 5, 6) -----------------------------------------------------------
@pytest.mark.parametrize("gamma, steps", [(0.001, 200), (1e-300, 10), (1e-300, 2)])
def test_tiny_gamma_warns_without_overflowing(gamma, steps):
    grid = SCHEDULE.grid(steps)
    with pytest.warns(bdia.InversionPrecisionWarning, match="amplifies rounding error") as record:
        bdia.BDIA(gamma).check_grid(grid, inverting=True)
    log10_amp = -math.log10(gamma) * (steps - 1)  # one factor 1/gamma per BDIA step i = 1..N-1
    expected = f"10^{log10_amp:.1f}" if log10_amp > 304 else f"{10**log10_amp:.3g}"
    assert f"by at least {expected}x" in str(record[0].message)


@pytest.mark.parametrize("gamma", [[1e6] * 19, [1.0] * 18 + [1.5], [0.5] * 18 + [float("nan")], [-0.1] * 19])
def test_gamma_sequences_are_validated_as_scalars_are(gamma):
    with pytest.raises(ValueError, match=r"gamma\[\d+\].*must be in \[0, 1\]"):
        bdia.BDIA(gamma=gamma)


def test_edict_warns_where_its_round_trip_loses_digits():
    model = Gaussian(torch.zeros(8, dtype=torch.float64), 0.5, schedule=SCHEDULE)  # linear in x
    x0 = model.sample_data(2, torch.Generator().manual_seed(0))
    solver = bdia.EDICT()
    errors = {}
    for steps in (100, 500):
        grid = SCHEDULE.grid(steps)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inv = solver.invert(model, x0, grid)
        warned = any(issubclass(w.category, bdia.InversionPrecisionWarning) for w in caught)
        errors[steps] = float((solver.sample(model, inv, grid) - x0).abs().max())
        # The warning is given exactly where the round trip is no longer good to 1e-4.
        assert warned == (steps == 500), (steps, errors[steps])
    assert errors[100] < 1e-8 and errors[500] > 1e-4


def test_edict_warns_at_small_p_where_the_round_trip_is_lost():
    model = Gaussian(torch.zeros(8, dtype=torch.float64), 0.5, schedule=SCHEDULE)
    x0 = model.sample_data(2, torch.Generator().manual_seed(0))
    solver, grid = bdia.EDICT(0.5), SCHEDULE.grid(36)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inv = solver.invert(model, x0, grid)
    error = float((solver.sample(model, inv, grid) - x0).abs().max() / x0.abs().max())
    assert error > 1e-2  # measured 8.8e-2: the round trip has lost its digits
    assert any(issubclass(w.category, bdia.InversionPrecisionWarning) for w in caught)


# ----- images (items 2, 3) ---------------------------------------------------------------------------
def png_bytes(width, height, bit_depth, colour_type, rows=b""):
    """A PNG written out by hand (Pillow cannot write 16-bit colour, nor an image it would refuse)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def to_pixels(path):
    from bdia.io.images import to_pixels

    return to_pixels(path, factor=8)


def bad_image_files(tmp_path):
    from PIL import Image

    files = {
        "empty": tmp_path / "empty.png",
        "text": tmp_path / "notes.png",
        "truncated": tmp_path / "cut.png",
        "bomb": tmp_path / "bomb.png",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("not an image\n")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(files["truncated"])
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["bomb"].write_bytes(png_bytes(15000, 15000, 8, 0))  # 225 MP: over twice Pillow's bomb limit
    return files


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "is empty"),
        ("text", "not an image file"),
        ("truncated", "truncated"),
        ("bomb", "too large to open safely"),
    ],
)
def test_unreadable_images_are_a_clear_error_naming_the_file(tmp_path, kind, message):
    from bdia.io.images import ImageReadError, read_image

    path = bad_image_files(tmp_path)[kind]
    for read in (read_image, to_pixels):
        with pytest.raises(ImageReadError, match=message) as info:
            read(path)
        assert isinstance(info.value, ValueError)
        text = str(info.value)
        assert os.fspath(path) in text and "\n" not in text


def test_16_bit_png_is_scaled_by_its_depth_without_a_warning(tmp_path):
    from PIL import Image

    values = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is lost: no warning
        x = to_pixels(tmp_path / "deep.png")
    expected = torch.from_numpy(values / 65535.0 * 2 - 1)
    assert x.shape == (1, 3, 32, 32)
    for c in range(3):
        torch.testing.assert_close(x[0, c].double(), expected, atol=1e-6, rtol=0)


def test_float_tiff_in_0_1_is_read_as_it_is(tmp_path):
    from PIL import Image

    values = np.random.default_rng(1).random((16, 24), dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "float.tiff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = to_pixels(tmp_path / "float.tiff")
    torch.testing.assert_close(x[0, 1], torch.from_numpy(values) * 2 - 1, atol=1e-6, rtol=0)


def test_8_bit_images_are_read_exactly_and_silently(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, g = to_pixels(tmp_path / "rgb.png"), to_pixels(tmp_path / "gray.png")
    assert torch.equal(((x[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(rgb))
    assert torch.equal(((g[0, 2] + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(rgb[..., 0]))


def test_16_bit_colour_png_warns_that_pillow_reads_8_bits(tmp_path):
    from bdia.io.images import ImageConversionWarning

    values = np.random.default_rng(3).integers(0, 65536, (8, 8, 3)).astype(">u2")
    rows = b"".join(b"\x00" + values[y].tobytes() for y in range(8))
    (tmp_path / "deep_rgb.png").write_bytes(png_bytes(8, 8, 16, 2, rows))
    with pytest.warns(ImageConversionWarning, match="16 bits per channel.*8"):
        x = to_pixels(tmp_path / "deep_rgb.png")
    high_byte = torch.from_numpy((values.astype(np.int64) >> 8).astype(np.float64))
    torch.testing.assert_close(((x[0] + 1) * 127.5).permute(1, 2, 0).double(), high_byte, atol=1e-3, rtol=0)


def test_animation_says_its_first_frame_is_used(tmp_path):
    from PIL import Image

    from bdia.io.images import ImageConversionWarning

    frames = [Image.new("L", (16, 16), 40 * k) for k in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(ImageConversionWarning, match="3 frames; only the first is used"):
        x = to_pixels(tmp_path / "anim.gif")
    assert float(x.max()) == -1.0  # frame 0 is black


def test_reduction_to_8_bits_warns_only_when_it_loses_depth():
    from PIL import Image

    from bdia.io.images import ImageConversionWarning, ImageReadError, to_8bit

    exact = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 16-bit copies of the 8-bit levels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(np.asarray(to_8bit(Image.fromarray(exact))), np.arange(256).reshape(16, 16))
        assert np.array_equal(
            np.asarray(to_8bit(Image.fromarray((exact / 65535).astype(np.float32)))), np.arange(256).reshape(16, 16)
        )
    with pytest.warns(ImageConversionWarning, match="more than 8 bits"):
        to_8bit(Image.fromarray(exact + 1))
    with pytest.warns(ImageConversionWarning, match="taken as 0..255"):
        to_8bit(Image.fromarray(np.full((4, 4), 200.0, dtype=np.float32)))
    for bad in (-1.0, 300.0, float("nan")):
        with pytest.raises(ImageReadError, match="float image"):
            to_8bit(Image.fromarray(np.full((4, 4), bad, dtype=np.float32)))


# ----- models: pickled weights are not loaded unless allowed (item 8) ----------------------------------
@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    """The tiny SD pipeline re-saved with safe_serialization=False (UNet and VAE as .bin pickles)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffusers import DiffusionPipeline

    from pipelines_fixtures import model_dir

    folder = tmp_path_factory.mktemp("pickled") / "sd"
    DiffusionPipeline.from_pretrained(model_dir("sd")).save_pretrained(folder, safe_serialization=False)
    return folder


def _no_torch_load(*args, **kwargs):
    raise AssertionError("torch.load was called: a pickle was unpickled")


def test_pickled_model_weights_are_refused_unless_allowed(pickled_model, monkeypatch):
    from bdia.io.loading import UnsafeWeightsError, load_pipeline

    monkeypatch.setattr(torch, "load", _no_torch_load)
    with pytest.raises(UnsafeWeightsError, match=r"pickled weights \(.*unet.*\.bin.*allow_pickle=True") as info:
        load_pipeline(pickled_model, progress=False)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    monkeypatch.undo()
    pipe = load_pipeline(pickled_model, allow_pickle=True, progress=False)
    assert type(pipe).__name__ == "StableDiffusionPipeline"


def test_an_inversion_pointing_at_pickled_weights_does_not_get_them_loaded(pickled_model, tmp_path, monkeypatch):
    """A hostile inversion file records a model folder of pickles: reconstructing must not unpickle them."""
    from bdia.io.loading import UnsafeWeightsError, load_pipeline
    from bdia.io.saved import load_inversion, save_inversion
    from test_saved_fuzz import valid_inversion

    inv = valid_inversion()
    inv.model["id"] = os.fspath(pickled_model)
    loaded = load_inversion(save_inversion(inv, tmp_path / "hostile.safetensors"))
    monkeypatch.setattr(torch, "load", _no_torch_load)
    with pytest.raises(UnsafeWeightsError, match="pickled weights"):
        load_pipeline(loaded.model["id"], progress=False)


def test_safetensors_models_load_without_unpickling_anything(monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from bdia.io.loading import load_pipeline
    from pipelines_fixtures import model_dir

    monkeypatch.setattr(torch, "load", _no_torch_load)
    pipe = load_pipeline(model_dir("sd"), dtype=torch.float32, progress=False)
    assert pipe.unet.dtype == torch.float32


def test_missing_model_is_a_clear_error(tmp_path):
    from bdia.io.loading import load_pipeline

    (tmp_path / "not_a_pipeline").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path / "not_a_pipeline")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_pipeline(tmp_path / "absent" / "x.ckpt")


def test_transparency_is_dropped_with_a_warning_and_opaque_alpha_silently(tmp_path):
    from PIL import Image

    from bdia.io.images import ImageConversionWarning

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opaque = to_pixels(tmp_path / "opaque.png")
    with pytest.warns(ImageConversionWarning, match="transparent pixels; the alpha channel is dropped"):
        clear = to_pixels(tmp_path / "clear.png")
    assert torch.equal(opaque, clear)  # the stored colours, as before
