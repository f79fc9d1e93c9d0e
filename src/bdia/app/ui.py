"""The web app's page: gradio layout and event wiring only; the work is :mod:`bdia.app.work` (plain Editor calls).

Imported by ``bdia app`` alone (gradio is the ``app`` extra). Every handler runs in gradio's queue, one at a
time (the one model in memory); a session's inversions live in its ``gr.State`` (bounded, and dropped with
the session); bad input becomes a message in the page (``gr.Error`` / ``gr.Warning``), never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from ..grids import GRID_KINDS
from .work import CONTROL_CHOICES, METHODS, Sample, SessionCache, UserError, Workbench, describe_inversion, edit_options

__all__ = ["build_app", "launch"]

SESSION_TTL_S = 2 * 3600  # a session's inversions are dropped 2 h after its last use (or when its tab closes)
MAX_SESSIONS = 64  # sessions whose state the server keeps at once (each holds at most SESSION_INVERSIONS)
MAX_FILE_SIZE = "32mb"  # uploads beyond are refused by the server before any handler runs

# Pixel art: the embedded models' 16x16 and 32x32 images are shown enlarged without blurring.
CSS = """
.pixelated img { image-rendering: pixelated; object-fit: contain !important; }
#report, #edit-report, #inversion-summary { min-height: 1.5em; }
"""


@contextmanager
def _page_messages() -> Iterator[list[str]]:
    """Warnings collected during the work become ``gr.Warning`` toasts; user errors a ``gr.Error`` message."""
    notes: list[str] = []
    try:
        yield notes
    except UserError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except gr.Error:
        raise
    except Exception as e:  # a bug, not bad input: one line in the page, the traceback in the server's log
        traceback.print_exc(file=sys.stderr)
        text = " ".join(str(e).split())[:300]
        raise gr.Error(f"internal error ({type(e).__name__}: {text}); see the server log") from None
    finally:
        for note in notes[:3]:
            gr.Warning(note)


def _readable(image: gr.Image) -> gr.Image:
    """Make an upload gradio cannot decode a one-line message in the page, not gradio's processing report."""
    decode = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return decode(payload)
        except Exception as e:
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            if type(e).__name__ == "DecompressionBombError":
                message = f"{name} has too many pixels to open safely; resize it first"
            else:
                message = f"{name} is not an image file the app can read ({type(e).__name__}); upload a PNG or JPEG"
            raise gr.Error(message, print_exception=False) from None

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def _session(cache: SessionCache | None) -> SessionCache:
    return SessionCache() if cache is None else cache


def build_app(
    bench: Workbench, samples: list[Sample] | None = None, *, steps: int = 50, title: str = "bdia"
) -> gr.Blocks:
    """The Blocks app over ``bench``; ``samples`` fill the examples table; ``steps`` is the inversion's first
    number of steps."""
    backend = bench.editor.backend
    pixelated = max(backend.default_size) <= 64  # the embedded models' tiny images

    def invert(
        cache: SessionCache | None,
        image: str | None,
        prompt: str,
        method: str,
        steps: float,
        guidance: float,
        strength: float,
        grid: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (gradio's idiom: the default is the hook)
    ) -> tuple:
        cache = _session(cache)
        with _page_messages() as notes:
            entry = bench.invert(
                cache,
                image,
                prompt,
                method=method,
                num_steps=int(steps),
                guidance_scale=guidance,
                strength=strength,
                grid=grid,
                folder=bench.session_folder(request.session_hash or "api"),
                notes=notes,
            )
        return _shown(cache, entry)

    def load(cache: SessionCache | None, path: str | None, request: gr.Request) -> tuple:
        cache = _session(cache)
        with _page_messages() as notes:
            entry = bench.load(cache, path, notes=notes)
        return _shown(cache, entry)

    def _shown(cache: SessionCache, entry: Any) -> tuple:
        return (
            cache,
            entry.source,
            entry.reconstruction,
            None,
            "Reconstruction: " + entry.report,
            describe_inversion(entry.inversion),
            entry.inversion.guidance_scale,
            None if entry.file is None else str(entry.file),
            None,
            "",
        )

    def edit(
        cache: SessionCache | None,
        target: str,
        guidance: float,
        control: str,
        blend_words: str,
        cross_steps: float,
        self_steps: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple:
        cache = _session(cache)
        with _page_messages() as notes:
            outcome = bench.edit(
                cache.active,
                target,
                edit_options(guidance, control, blend_words, cross_steps, self_steps),
                folder=bench.session_folder(request.session_hash or "api"),
                notes=notes,
            )
        return (
            cache,
            outcome.image,
            "Edit: " + outcome.report,
            str(outcome.file),
        )

    image_args: dict[str, Any] = {"format": "png", "height": 260, "buttons": ["fullscreen"]}
    if pixelated:
        image_args["elem_classes"] = ["pixelated"]
    model_note = _model_note(bench)
    with gr.Blocks(title=f"{title}: invert once, edit many", delete_cache=(1800, 3600), analytics_enabled=False) as app:
        cache = gr.State(None, time_to_live=SESSION_TTL_S)
        gr.Markdown(
            f"## {title} · invert once, edit many\n"
            f"Exact inversion (BDIA, EDICT, Rex; DDIM for comparison): the reconstruction is the source, pixel "
            f"for pixel, and every edit regenerates from the same inversion. {model_note}"
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                gr.Markdown("### 1 · Invert")
                image = _readable(
                    gr.Image(
                        label="Image",
                        type="filepath",
                        image_mode=None,  # keep the file as uploaded: bdia converts it for the model
                        sources=["upload", "clipboard"],
                        elem_id="input-image",
                        **image_args,
                    )
                )
                source_prompt = gr.Textbox(label="Source prompt (what the image shows)", elem_id="source-prompt")
                invert_button = gr.Button("Invert", variant="primary", elem_id="invert")
                with gr.Accordion("Inversion settings", open=False):
                    method = gr.Dropdown(list(METHODS), value="bdia", label="Method", elem_id="method")
                    num_steps = gr.Slider(
                        2, max(200, int(steps)), value=int(steps), step=1, label="Steps", elem_id="steps"
                    )
                    guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="Guidance", elem_id="guidance")
                    strength = gr.Slider(0.1, 1.0, value=1.0, step=0.05, label="Strength", elem_id="strength")
                    grid = gr.Dropdown(list(GRID_KINDS), value="diffusers", label="Grid", elem_id="grid")
                saved = gr.File(
                    label="…or load a saved inversion (.safetensors)",
                    file_types=[".safetensors"],
                    elem_id="load-inversion",
                )
            with gr.Column(scale=5):
                with gr.Row():
                    source_view = gr.Image(label="Source", interactive=False, elem_id="source-view", **image_args)
                    recon_view = gr.Image(label="Reconstruction", interactive=False, elem_id="recon-view", **image_args)
                    edit_view = gr.Image(label="Edit", interactive=False, elem_id="edit-view", **image_args)
                report = gr.Markdown(label="Reconstruction report", elem_id="report")
                gr.Markdown("### 2 · Edit (as many times as you like)")
                summary = gr.Markdown(
                    "Invert an image or load a saved inversion first.", label="Inversion", elem_id="inversion-summary"
                )
                with gr.Row(equal_height=True):
                    target = gr.Textbox(label="Target prompt", elem_id="target-prompt", scale=4)
                    edit_guidance = gr.Slider(
                        0, 10, value=1.0, step=0.5, label="Guidance", elem_id="edit-guidance", scale=2
                    )
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit", scale=1)
                with gr.Accordion("Edit control (the source branch retraces the inversion exactly)", open=False):
                    with gr.Row():
                        control = gr.Dropdown(
                            list(CONTROL_CHOICES), value="none", label="Control", elem_id="edit-control"
                        )
                        blend_words = gr.Textbox(
                            value="", label="LocalBlend words: source, target (Prompt-to-Prompt)", elem_id="blend-words"
                        )
                        cross_steps = gr.Slider(0, 1, value=0.8, step=0.05, label="Cross-attention steps (P2P)")
                        self_steps = gr.Slider(0, 1, value=0.4, step=0.05, label="Self-attention steps (P2P)")
                edit_report = gr.Markdown(label="Edit report", elem_id="edit-report")
                with gr.Row():
                    inversion_file = gr.DownloadButton(
                        "Download inversion (.safetensors)", elem_id="download-inversion"
                    )
                    edit_file = gr.DownloadButton("Download edited image (.png)", elem_id="download-edit")
        if samples:
            gr.Examples(
                [[str(s.path), s.prompt, s.target] for s in samples],
                inputs=[image, source_prompt, target],
                label="Samples (held out, never seen in training) with a suggested target prompt",
                examples_per_page=len(samples),
            )

        shown = [
            cache,
            source_view,
            recon_view,
            edit_view,
            report,
            summary,
            edit_guidance,
            inversion_file,
            edit_file,
            edit_report,
        ]
        # One model in memory: every event that runs it shares one queue slot (a per-event limit would let an
        # invert and an edit of two users run at once).
        invert_inputs = [cache, image, source_prompt, method, num_steps, guidance, strength, grid]
        invert_button.click(
            invert, invert_inputs, shown, api_name="invert", concurrency_id="model", concurrency_limit=1
        )
        saved.upload(
            load, [cache, saved], shown, api_name="load_inversion", concurrency_id="model", concurrency_limit=1
        )
        edited = [cache, edit_view, edit_report, edit_file]
        edit_inputs = [cache, target, edit_guidance, control, blend_words, cross_steps, self_steps]
        edit_button.click(edit, edit_inputs, edited, api_name="edit", concurrency_id="model", concurrency_limit=1)
        target.submit(
            edit,
            edit_inputs,
            edited,
            api_visibility="private",
            concurrency_id="model",
            concurrency_limit=1,
        )  # Enter = Edit
    return app


def _model_note(bench: Workbench) -> str:
    backend = bench.editor.backend
    w, h = backend.default_size
    if bench.model_id == "scenes":
        return (
            f"Model: the embedded **scenes** model ({w}x{h} RGB); prompts use its words, e.g. *a large red circle "
            "and a small blue square on a gray background* (colours red orange yellow green blue purple; shapes "
            "circle square triangle; sizes small large; backgrounds gray black white navy)."
        )
    if bench.model_id == "digits":
        return f"Model: the embedded **digits** model ({w}x{h} grayscale); prompts are the digit classes 0 to 9."
    return f"Model: **{bench.model_id}**."


def launch(
    bench: Workbench,
    samples: list[Sample] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    steps: int = 50,
    on_start: Callable[[str], None] | None = None,
) -> None:
    """Serve the app until interrupted: one queued call at a time (one model in memory), bounded sessions."""
    app = build_app(bench, samples, steps=steps)
    app.queue(default_concurrency_limit=1, max_size=32)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    _, url, share_url = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        quiet=True,  # the caller prints the address (on_start)
        show_error=True,  # errors gradio raises itself (e.g. a file it cannot decode) show their message
        max_file_size=MAX_FILE_SIZE,
        state_session_capacity=MAX_SESSIONS,
        allowed_paths=[os.fspath(bench.workdir)],
        footer_links=["api"],
        theme=theme,
        css=CSS,
    )
    if on_start is not None:
        on_start(share_url or url)
    try:
        app.block_thread()
    finally:
        app.close()
