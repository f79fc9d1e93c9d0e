"""What the web app does, as plain Python over the :class:`~bdia.editing.Editor` (no gradio here).

    bench = Workbench(Editor.from_pretrained("scenes"), workdir)
    cache = SessionCache()
    entry = bench.invert(cache, "scene.png", "a large red circle on a gray background")
    outcome = bench.edit(entry, "a large blue circle on a gray background", guidance_scale=3.0, folder=...)

A :class:`Workbench` holds the one loaded model and the app's limits; a :class:`SessionCache` holds one
browser session's inversions (a few, newest kept), so an image is inverted once and edited many times.
Bad input is a :class:`UserError` with one line saying what to change; the page shows it as a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..editing.editor import Editor, EditResult
from ..io.files import atomic_path
from ..io.images import read_image
from ..io.saved import ImageInversion, load_inversion, save_inversion
from ..solvers import NonFiniteError

__all__ = [
    "MAX_PIXELS",
    "METHODS",
    "SESSION_INVERSIONS",
    "Entry",
    "EditOutcome",
    "Sample",
    "SessionCache",
    "UserError",
    "Workbench",
    "default_model",
    "describe_inversion",
    "edit_options",
    "CONTROL_CHOICES",
    "embedded_samples",
]

METHODS = ("bdia", "edict", "rex", "ddim")
MAX_PIXELS = 2048 * 2048  # larger uploads are refused: the model would resize or run out of memory anyway
SESSION_INVERSIONS = 4  # inversions one browser session keeps (newest first out is the oldest)
EDIT_FILE, INVERSION_FILE = "edit.png", "inversion.safetensors"


class UserError(ValueError):
    """Input the user can fix; the app shows the message, never a traceback."""


def default_model() -> str:
    """The embedded scenes model (text prompts, 32x32 RGB) when diffusers is installed, else the digits model."""
    from importlib.util import find_spec

    from ..scenes import MODEL_FILE, WEIGHTS_DIR

    if find_spec("diffusers") is not None and (WEIGHTS_DIR / MODEL_FILE).is_file():
        return "scenes"
    return "digits"


# ----- edit options: the one place that builds Editor.edit's keywords ----------------------------------
CONTROL_CHOICES = ("none", "Prompt-to-Prompt", "MasaCtrl")


def edit_options(
    guidance_scale: float,
    control: str = "none",
    blend_words: str = "",
    cross_steps: float = 0.8,
    self_steps: float = 0.4,
) -> dict[str, Any]:
    """Keyword arguments of :meth:`Editor.edit` from the edit panel's values: the guidance and an edit control
    (``bdia.editing.controls``, docs/editing.md). ``blend_words`` is "source words, target words" for
    Prompt-to-Prompt's LocalBlend (empty: none)."""
    options: dict[str, Any] = {"guidance_scale": float(guidance_scale)}
    if control in (None, "", "none"):
        if blend_words.strip():
            raise UserError("LocalBlend words apply to the Prompt-to-Prompt control: choose it, or clear the words")
        return options
    from ..editing.controls import MutualSelfAttention, PromptToPrompt

    if control == "MasaCtrl":
        options["control"] = MutualSelfAttention()
    elif control == "Prompt-to-Prompt":
        blend = None
        if blend_words.strip():
            parts = [p.split() for p in blend_words.split(",")]
            if len(parts) != 2 or not (parts[0] or parts[1]):
                raise UserError('LocalBlend words: give "source words, target words", e.g. "red, blue"')
            blend = (parts[0], parts[1])
        try:
            p2p = PromptToPrompt(cross_steps=float(cross_steps), self_steps=float(self_steps), blend=blend)
            options["control"] = p2p
        except ValueError as e:
            raise UserError(str(e)) from None
    else:
        raise UserError(f"unknown control {control!r}; choose one of {', '.join(CONTROL_CHOICES)}")
    return options


@dataclass
class Sample:
    """A ready-made input: an image file, its source prompt and a suggested target prompt."""

    path: Path
    prompt: str
    target: str


@dataclass
class Entry:
    """One inversion in a session, with what the page shows of it."""

    key: str
    inversion: ImageInversion
    source: Any  # PIL image: what was inverted, as the model sees it (resized, converted)
    reconstruction: Any  # PIL image
    report: str  # the reconstruction's measured error, one line
    mismatches: int | None  # 8-bit values that differ between reconstruction and source (None: unknown)
    file: Path | None = None  # the saved inversion, for download


@dataclass
class EditOutcome:
    image: Any  # PIL image
    report: str
    changed: int  # 8-bit values that differ from the source
    file: Path | None = None


@dataclass
class SessionCache:
    """One browser session's inversions, at most ``capacity`` (least recently used dropped): bounded memory."""

    capacity: int = SESSION_INVERSIONS
    entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    current: str | None = None

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            self.current = key
        return entry

    def put(self, entry: Entry) -> Entry:
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        self.current = entry.key
        return entry

    @property
    def active(self) -> Entry | None:
        return None if self.current is None else self.entries.get(self.current)


def describe_inversion(inv: ImageInversion) -> str:
    """Method, grid, steps, strength and guidance of an inversion, one line (what an edit reuses)."""
    solver = dict(inv.solver)
    name = str(solver.pop("name", "?")).upper()
    params = ", ".join(f"{k}={v}" for k, v in solver.items() if k not in ("forward", "alternate", "bit_exact"))
    strength = "" if inv.strength == 1.0 else f", strength {inv.strength:g}"
    return (
        f"{name}({params}) · {inv.num_steps} steps, {inv.grid_kind} grid{strength} · inverted at guidance "
        f"{inv.guidance_scale:g} under {inv.prompt[0]!r}"
    )


@contextlib.contextmanager
def _catch_warnings(notes: list[str]) -> Iterator[None]:
    """Collect warnings as one-line notes for the page (the app's work runs one call at a time)."""
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always", UserWarning)  # each call's notes, even if the same note came before
        try:
            yield
        finally:
            for w in log:
                if not issubclass(w.category, UserWarning):  # e.g. a library's ResourceWarning: not the user's
                    continue
                text = " ".join(str(w.message).split())
                if text not in notes:
                    notes.append(text)


class Workbench:
    """The loaded model and the app's limits; every method is plain Editor calls and raises :class:`UserError`.

    Args:
        editor: the :class:`Editor` every session shares (the app's queue runs one call at a time).
        workdir: where inversion and edit files are written for download (one subfolder per session).
        max_pixels: the largest image accepted, in pixels.
    """

    def __init__(self, editor: Editor, workdir: str | os.PathLike, max_pixels: int = MAX_PIXELS):
        self.editor = editor
        self.workdir = Path(workdir)
        self.max_pixels = int(max_pixels)
        self.model_id = str(editor.backend.record().get("id"))

    # ----- invert -------------------------------------------------------------------------------------
    def read(self, path: str | os.PathLike | None) -> Any:
        """An uploaded image file as a PIL image, refused (UserError) when missing, not an image or too large."""
        if path is None or str(path) == "":
            raise UserError("upload an image or pick a sample first")
        from PIL import Image

        side = int(self.max_pixels**0.5)
        try:
            with Image.open(path) as header:  # the size from the header, before decoding any pixels
                w, h = header.size
        except Exception:  # not an image, or beyond Pillow's own bomb limit: read_image names the problem
            w = h = 0
        if w * h > self.max_pixels:
            raise UserError(f"the image is {w}x{h} pixels; the app takes up to {side}x{side}: resize it first")
        try:
            return read_image(path)
        except (ValueError, OSError) as e:
            raise UserError(f"that file is not an image bdia can read: {_message(e, Path(path).name)}") from None

    def invert(
        self,
        cache: SessionCache,
        image_path: str | os.PathLike | None,
        prompt: str,
        *,
        method: str = "bdia",
        num_steps: int = 50,
        guidance_scale: float = 1.0,
        strength: float = 1.0,
        grid: str = "diffusers",
        folder: str | os.PathLike | None = None,
        notes: list[str] | None = None,
    ) -> Entry:
        """Invert the image under ``prompt`` and reconstruct it; a repeat of the same image and settings is
        served from the session's cache (inverted once). ``folder``: write the inversion there for download."""
        notes = [] if notes is None else notes
        image = self.read(image_path)
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("enter the source prompt: what the image shows (the inversion runs under it)")
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        settings = (prompt, method, int(num_steps), float(guidance_scale), float(strength), grid)
        key = _key(image, settings, self.model_id)
        cached = cache.get(key)
        if cached is not None:
            return cached
        with _catch_warnings(notes), _user_errors():
            self.editor.validate_prompt(prompt)
            inv = self.editor.invert(
                image,
                prompt,
                method=method,
                num_steps=int(num_steps),
                guidance_scale=float(guidance_scale),
                strength=float(strength),
                grid=grid,
                progress=True,
            )
            entry = self._entry(key, inv, self.editor.backend.load_images(image, inv.image_size), image)
        if folder is not None:
            entry.file = self._save(inv, folder)
        return cache.put(entry)

    def load(self, cache: SessionCache, path: str | os.PathLike | None, notes: list[str] | None = None) -> Entry:
        """A saved inversion (``.safetensors`` from ``bdia invert`` or this app), refused if another model made it."""
        notes = [] if notes is None else notes
        if path is None or str(path) == "":
            raise UserError("choose a saved inversion (.safetensors) to load")
        name = Path(path).name
        with _catch_warnings(notes), _user_errors(name):
            inv = load_inversion(path, device=self.editor.device)
            if inv.batch_size != 1:
                raise UserError(
                    f"{name} holds {inv.batch_size} images; the app edits one at a time (use `bdia edit` for batches)"
                )
            self.editor.check(inv)
            source = None if inv.clean is None else self.editor.backend.decode(inv.clean, inv.image_size)
            entry = self._entry(_file_key(path), inv, source)
        entry.file = Path(path)
        return cache.put(entry)

    def _entry(self, key: str, inv: ImageInversion, source_pixels: Any, image: Any = None) -> Entry:
        """Reconstruct ``inv`` and measure it against the inverted latents (what exact inversion guarantees);
        with a lossy codec (a VAE) also against ``image``, beside the codec's own round trip."""
        rec = self.editor.reconstruct(inv, progress=True)
        image = rec.images[0]
        total = int(np.asarray(image).size)
        identical = rec.info.get("identical")
        if identical is None:
            mismatches = None
            report = "the file holds no clean latents, so the reconstruction's error cannot be measured"
        else:
            mismatches = int(round((1.0 - float(identical)) * total))
            report = (
                f"**{mismatches} mismatching** of {total} 8-bit values ({100 * identical:.2f}% identical), "
                f"latent error {rec.latent_error:.1e}"
            )
        if image is not None and self.editor.backend.lossy_codec:
            errors = self.editor.pixel_errors(image, rec, inv)
            report += (
                f"; against your image: mean error {errors['reconstruction']:.4f}, the VAE's own round trip "
                f"{errors['vae_roundtrip']:.4f} (no inversion can beat it)"
            )
        seconds = inv.info.get("seconds")
        timing = f"inversion {seconds:.1f} s, " if isinstance(seconds, (int, float)) else ""
        report += f" · NFE {inv.inversion.nfe} + {rec.nfe} · {timing}reconstruction {rec.seconds:.1f} s"
        source = image if source_pixels is None else self.editor.backend.to_images(source_pixels.cpu())[0]
        return Entry(key, inv, source, image, report, mismatches)

    # ----- edit ---------------------------------------------------------------------------------------
    def edit(
        self,
        entry: Entry | None,
        prompt: str,
        options: dict[str, Any],
        *,
        folder: str | os.PathLike | None = None,
        notes: list[str] | None = None,
    ) -> EditOutcome:
        """Regenerate the inversion under the target ``prompt`` with ``options`` (:func:`edit_options`)."""
        notes = [] if notes is None else notes
        if entry is None:
            raise UserError("invert an image (or load a saved inversion) before editing")
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("enter a target prompt: what the edited image should show")
        with _catch_warnings(notes), _user_errors():
            self.editor.validate_prompt(prompt)
            result: EditResult = self.editor.edit(entry.inversion, prompt, progress=True, **options)
        image = result.images[0]
        changed = int((np.asarray(image) != np.asarray(entry.source)).sum())
        total = int(np.asarray(image).size)
        guidance = options.get("guidance_scale", entry.inversion.guidance_scale)
        report = (
            f"edited to {prompt!r} at guidance {guidance:g}: {changed} of {total} 8-bit values changed "
            f"from the source · NFE {result.nfe} · {result.seconds:.1f} s"
        )
        outcome = EditOutcome(image, report, changed)
        if folder is not None:
            path = Path(folder) / EDIT_FILE
            with atomic_path(path, overwrite=True) as tmp:
                image.save(tmp, format="PNG")
            outcome.file = path
        return outcome

    def _save(self, inv: ImageInversion, folder: str | os.PathLike) -> Path:
        return save_inversion(inv, Path(folder) / INVERSION_FILE, overwrite=True)

    def session_folder(self, session: str) -> Path:
        """A session's download folder (its edit and inversion files are replaced by newer ones)."""
        safe = "".join(c for c in session if c.isalnum())[:64] or "session"
        folder = self.workdir / "sessions" / safe
        folder.mkdir(parents=True, exist_ok=True)
        return folder


# ----- samples --------------------------------------------------------------------------------------
def embedded_samples(model: str, folder: str | os.PathLike, n: int = 4) -> list[Sample]:
    """Held-out inputs of an embedded model (never seen in training) written as PNG files; [] for other models."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    out: list[Sample] = []
    if model == "scenes":
        from ..scenes import held_out_edit_pairs

        # One of each edit kind that the captions can say (colour, shape, background, size).
        for k, pair in enumerate(held_out_edit_pairs(n, kinds=("colour", "shape", "background", "size"))):
            path = folder / f"scene_{k}.png"
            Image.fromarray(pair.source_image).save(path)
            out.append(Sample(path, pair.source_caption, pair.target_caption))
    elif model == "digits":
        from importlib.util import find_spec

        if find_spec("sklearn") is None:  # the digits data set comes with scikit-learn
            return []
        from ..digits.data import load_digits

        test = load_digits("test")
        for k in range(min(n, len(test))):
            label = int(test.labels[k])
            path = folder / f"digit_{k}.png"
            Image.fromarray(test.images[k, 0].numpy(), mode="L").save(path)
            out.append(Sample(path, str(label), str((label + 3) % 10)))
    return out


# ----- helpers ----------------------------------------------------------------------------------------
def _key(image: Any, settings: tuple, model: str) -> str:
    h = hashlib.sha256()
    h.update(f"{model}|{image.mode}|{image.size}|{settings!r}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _file_key(path: str | os.PathLike) -> str:
    h = hashlib.sha256(b"file|")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _message(e: BaseException, name: str | None = None) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if name:  # the server's temporary path means nothing to the user: name the uploaded file instead
        import re

        text = re.sub(r"'[^']*" + re.escape(name) + "'", repr(name), text)
    return text


@contextlib.contextmanager
def _user_errors(name: str | None = None) -> Iterator[None]:
    """What bad input raises (ValueError, TypeError, OSError, Pillow's errors, non-finite latents) as a
    :class:`UserError`; ``name`` replaces the server's temporary path of an uploaded file in the message."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        pil = type(e).__module__.split(".")[0] == "PIL"
        if isinstance(e, (ValueError, TypeError, OSError, NonFiniteError)) or pil:
            raise UserError(_message(e, name)) from None
        raise
