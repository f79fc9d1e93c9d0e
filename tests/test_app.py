"""``bdia app``: the work as plain Python, the served app through gradio_client, and the page in headless Chromium.

The served tests start ``bdia app`` on a free local port in a subprocess (the embedded scenes model) and invert
a held-out scene. The browser test needs Debian's ``chromium`` and ``chromium-driver`` (CI installs them in
``.ci/run``); without them it is skipped with a message saying so. ``BDIA_APP_SCREENSHOT=docs/app.png`` makes
the browser test save a screenshot of the page after its edit (how docs/app.png is made).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")  # the scenes model is a diffusers UNet
from PIL import Image  # noqa: E402

from bdia.app.work import SESSION_INVERSIONS, SessionCache, UserError, Workbench, edit_options  # noqa: E402
from bdia.editing.editor import Editor  # noqa: E402
from bdia.io.saved import save_inversion  # noqa: E402
from bdia.scenes import held_out_edit_pairs  # noqa: E402

STEPS = 12  # enough for an exact round trip and a visible edit, quick on a busy CPU
SCREENSHOT = os.environ.get("BDIA_APP_SCREENSHOT")  # the screenshot shows the app's default 50 steps
SERVED_STEPS = 50 if SCREENSHOT else STEPS
CHROMIUM = [shutil.which("chromium"), shutil.which("chromium-browser")]
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)


@pytest.fixture(scope="module")
def pair():
    """A held-out scene (never seen in training) and a colour edit of it."""
    return held_out_edit_pairs(1, kinds=("colour",))[0]


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory, pair):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(pair.source_image).save(path)
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ----- the work, without a server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_bench(tmp_path_factory, single_thread):
    return Workbench(Editor.from_pretrained("digits", progress=False), tmp_path_factory.mktemp("bench"))


def test_workbench_inverts_once_and_edits_many_times(digits_bench, digit_png, tmp_path):
    cache = SessionCache()
    entry = digits_bench.invert(cache, digit_png, "3", num_steps=STEPS, folder=tmp_path)
    assert entry.mismatches == 0 and "**0 mismatching** of 256" in entry.report
    assert np.array_equal(np.asarray(entry.reconstruction), np.asarray(Image.open(digit_png)))
    assert digits_bench.invert(cache, digit_png, "3", num_steps=STEPS) is entry  # the cache: inverted once
    first = digits_bench.edit(entry, "8", edit_options(guidance_scale=2.0), folder=tmp_path)
    second = digits_bench.edit(entry, "0", edit_options(guidance_scale=2.0), folder=tmp_path)
    assert first.changed > 0 and second.changed > 0
    assert not np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert np.array_equal(pixels(second.file), np.asarray(second.image.convert("RGB")))  # the download
    loaded = digits_bench.load(SessionCache(), entry.file)
    assert loaded.mismatches == 0 and np.array_equal(np.asarray(loaded.source), np.asarray(entry.source))


def test_session_cache_is_bounded(digits_bench, digit_png):
    cache = SessionCache()
    entries = [digits_bench.invert(cache, digit_png, "3", num_steps=s) for s in range(2, 3 + SESSION_INVERSIONS)]
    assert len(cache.entries) == SESSION_INVERSIONS and entries[0].key not in cache.entries
    assert cache.active is entries[-1]


def test_workbench_refuses_bad_input_with_a_message(digits_bench, digit_png, tmp_path):
    cache = SessionCache()
    with pytest.raises(UserError, match="upload an image"):
        digits_bench.invert(cache, None, "3")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UserError, match="not an image"):
        digits_bench.invert(cache, tmp_path / "notes.png", "3")
    Image.new("L", (2100, 2100)).save(tmp_path / "huge.png")
    with pytest.raises(UserError, match="2100x2100 pixels.*resize it first"):
        digits_bench.invert(cache, tmp_path / "huge.png", "3")
    with pytest.raises(UserError, match="source prompt"):
        digits_bench.invert(cache, digit_png, "  ")
    with pytest.raises(UserError, match="invert an image"):
        digits_bench.edit(None, "8", edit_options(1.0))
    entry = digits_bench.invert(cache, digit_png, "3", num_steps=STEPS)
    with pytest.raises(UserError, match="target prompt"):
        digits_bench.edit(entry, "", edit_options(1.0))
    (tmp_path / "fake.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="fake.safetensors"):
        digits_bench.load(cache, tmp_path / "fake.safetensors")
    assert cache.active is entry  # a refusal leaves the session as it was


def test_cli_names_the_extra_when_gradio_is_missing(monkeypatch, capsys):
    import importlib.util

    import bdia.cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert bdia.cli.main(["app"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[app]"' in err


def test_bdia_help_does_not_import_gradio():
    code = "import sys, bdia.cli; bdia.cli.build_parser(); print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----- the served app --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_url():
    """``bdia app`` (the scenes model) serving on a free local port in a subprocess; its URL."""
    pytest.importorskip("gradio")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "bdia.cli", "app", "--model", "scenes", "--port", str(_free_port())]
    proc = subprocess.Popen(
        cmd + ["--steps", str(SERVED_STEPS)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:  # keep draining the pipe, so that the server never blocks on a full one
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))
            if lines[-1].startswith("bdia app:"):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(120) or proc.poll() is not None:
        proc.kill()
        pytest.fail("bdia app did not start:\n" + "".join(lines[-30:]))
    url = re.search(r"(http://\S+)", lines[-1] if lines[-1].startswith("bdia app:") else "".join(lines))
    assert url, lines
    yield url.group(1)
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def digits_inversion(tmp_path_factory, single_thread):
    """A saved inversion of another model (digits), which the scenes app must refuse."""
    from bdia.digits import load_digits

    test = load_digits("test")
    editor = Editor.from_pretrained("digits", progress=False)
    inv = editor.invert(Image.fromarray(test.images[0, 0].numpy()), str(int(test.labels[0])), num_steps=STEPS)
    return save_inversion(inv, tmp_path_factory.mktemp("digits") / "digit.safetensors")


def test_client_api_inverts_edits_and_refuses_bad_input(app_url, scene_png, pair, digits_inversion, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False, download_files=str(tmp_path))
    source, rec, _, report, summary, guidance, inv_file, _, _ = client.predict(
        handle_file(scene_png), pair.source_caption, api_name="/invert"
    )
    assert "**0 mismatching** of 3072" in report and f"{SERVED_STEPS} steps" in summary and guidance == 1.0
    assert np.array_equal(pixels(rec), pair.source_image) and np.array_equal(pixels(source), pair.source_image)
    edited, edit_report, edit_file = client.predict(pair.target_caption, 3.0, api_name="/edit")
    assert "guidance 3" in edit_report and not np.array_equal(pixels(edited), pair.source_image)
    assert np.array_equal(pixels(edit_file), pixels(edited))

    # Bad input is a message; the app keeps working and the session keeps its inversion.
    for args, message in [
        ((pair.target_caption.replace("blue", "pink").replace("red", "pink"), 3.0, "/edit"), "vocabulary"),
        (("   ", 3.0, "/edit"), "enter a target prompt"),
        ((handle_file(str(digits_inversion)), "/load_inversion"), "digits"),
    ]:
        with pytest.raises(AppError, match=message):
            client.predict(*args[:-1], api_name=args[-1])
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(tmp_path / "text.png")), "a", api_name="/invert")
    Image.new("RGB", (2100, 2100)).save(tmp_path / "huge.png")
    with pytest.raises(AppError, match="resize it first"):
        client.predict(handle_file(str(tmp_path / "huge.png")), pair.source_caption, api_name="/invert")
    again, _, _ = client.predict(pair.target_caption, 3.0, api_name="/edit")
    assert np.array_equal(pixels(again), pixels(edited))  # the same inversion, the same edit
    # an edit control: a Prompt-to-Prompt edit differs from the plain one; bad LocalBlend words are a message
    old, new = pair.changed_words
    controlled, report_p2p, _ = client.predict(
        pair.target_caption, 3.0, "Prompt-to-Prompt", f"{' '.join(old)}, {' '.join(new)}", 0.8, 0.4, api_name="/edit"
    )
    assert "edited to" in report_p2p and not np.array_equal(pixels(controlled), pixels(edited))
    with pytest.raises(AppError, match="LocalBlend words"):
        client.predict(pair.target_caption, 3.0, "Prompt-to-Prompt", "a, b, c", 0.8, 0.4, api_name="/edit")

    # A saved inversion comes back as the same session state; another browser session sees none of it.
    reloaded = client.predict(handle_file(inv_file), api_name="/load_inversion")
    assert "**0 mismatching**" in reloaded[3] and np.array_equal(pixels(reloaded[1]), pair.source_image)
    with pytest.raises(AppError, match="invert an image"):
        Client(app_url, verbose=False, download_files=str(tmp_path)).predict("a", 1.0, api_name="/edit")


def _browser(download_dir: Path):
    pytest.importorskip("selenium")
    chromium = next((c for c in CHROMIUM if c), None)
    if chromium is None or CHROMEDRIVER is None:
        pytest.skip(
            "headless Chromium is not installed (apt-get install chromium chromium-driver; CI installs them): "
            "the browser test is skipped"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1150",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
    )
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _image_at(driver, css: str) -> np.ndarray:
    """The image an <img> in the page shows, fetched from the server as the browser got it."""
    src = driver.find_element("css selector", f"{css} img").get_attribute("src")
    with urllib.request.urlopen(src, timeout=30) as r:
        from io import BytesIO

        return np.asarray(Image.open(BytesIO(r.read())).convert("RGB"))


def _wait_file(folder: Path, suffix: str, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if p.suffix == suffix]
        if done:
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no {suffix} file was downloaded to {folder}: {sorted(p.name for p in folder.iterdir())}")


def test_browser_inverts_edits_and_downloads(app_url, scene_png, pair, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _browser(downloads)
    from selenium.webdriver.support.ui import WebDriverWait

    def text(css: str) -> str:
        return driver.find_element("css selector", css).text

    try:
        wait = WebDriverWait(driver, 60)
        driver.get(app_url)
        wait.until(lambda d: d.find_elements("css selector", "#invert"))
        driver.find_element("css selector", "#input-image input[type=file]").send_keys(str(scene_png))
        wait.until(lambda d: d.find_elements("css selector", "#input-image img"))
        driver.find_element("css selector", "#source-prompt textarea").send_keys(pair.source_caption)
        driver.find_element("css selector", "#invert").click()
        wait.until(lambda d: "mismatching" in text("#report"))
        assert "0 mismatching of 3072" in text("#report")
        assert np.array_equal(_image_at(driver, "#recon-view"), pair.source_image)

        driver.find_element("css selector", "#edit").click()  # no target prompt yet: a message, not a traceback
        wait.until(lambda d: "enter a target prompt" in text("body"))
        assert "Traceback" not in text("body")
        driver.find_element("css selector", "#target-prompt textarea").send_keys(pair.target_caption)
        driver.find_element("css selector", "#edit").click()
        wait.until(lambda d: "edited to" in text("#edit-report"))
        edited = _image_at(driver, "#edit-view")
        assert edited.shape == pair.source_image.shape and not np.array_equal(edited, pair.source_image)
        if SCREENSHOT:
            time.sleep(1)  # let the last image finish painting
            driver.save_screenshot(SCREENSHOT)

        driver.find_element("css selector", "#download-inversion").click()
        saved = _wait_file(downloads, ".safetensors")
    finally:
        driver.quit()
    out = tmp_path / "again.png"
    import bdia.cli

    assert bdia.cli.main(["reconstruct", str(saved), "-o", str(out), "-q"]) == 0  # in process: diffusers is loaded
    assert np.array_equal(pixels(out), pair.source_image)


def test_workbench_over_a_stable_diffusion_pipeline(tmp_path, single_thread):
    """A VAE model: exact in latent space (0 mismatches against the decoded inverted latents), and the report
    says how far the VAE itself moves the image."""
    pytest.importorskip("transformers")
    from pipelines_fixtures import editor, make_image

    bench = Workbench(editor("sd"), tmp_path)
    make_image((64, 64)).save(tmp_path / "in.png")
    entry = bench.invert(SessionCache(), tmp_path / "in.png", "a photo", num_steps=4, folder=tmp_path)
    assert entry.mismatches == 0 and "VAE's own round trip" in entry.report
    outcome = bench.edit(entry, "a painting", edit_options(guidance_scale=3.0))
    assert outcome.image.size == (64, 64) and outcome.changed > 0
    assert bench.load(SessionCache(), entry.file).mismatches == 0


def test_edit_options_build_the_controls():
    from bdia.app.work import UserError, edit_options
    from bdia.editing.controls import MutualSelfAttention, PromptToPrompt

    assert edit_options(2.0) == {"guidance_scale": 2.0}
    p2p = edit_options(3.0, "Prompt-to-Prompt", "red, blue", 0.5, 0.2)["control"]
    assert isinstance(p2p, PromptToPrompt) and p2p.blend.source_words == ["red"] and p2p.blend.target_words == ["blue"]
    assert isinstance(edit_options(3.0, "MasaCtrl")["control"], MutualSelfAttention)
    for args, message in ((("none", "red, blue"), "apply to the Prompt-to-Prompt"), (("P2P",), "unknown control")):
        with pytest.raises(UserError, match=message):
            edit_options(3.0, *args)
