"""``bdia app``: serve the local web app (invert once, edit many; :mod:`bdia.app`) on 127.0.0.1."""

from __future__ import annotations

import argparse
from typing import Any

from .common import CommandError, add_model_args, number_type, steps_type

port_type = number_type("port", 1, 65535, integer=True)
INSTALL_HINT = 'pip install -e ".[app]"'


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "app",
        help="a local web app: invert an image once, then edit it many times",
        description="Serve a web page to invert an image (upload one or pick a sample), see its exact "
        "reconstruction and error, edit it under other prompts as often as you like, and download the "
        f"edits and the saved inversion. Needs gradio: {INSTALL_HINT}.",
    )
    add_model_args(p, "the embedded scenes model, else digits")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_type, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link (off by default)")
    p.add_argument(
        "--steps", type=steps_type, default=50, help="the inversion's number of steps shown at first (default 50)"
    )
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    import os
    import signal
    import sys
    import tempfile
    from importlib.util import find_spec

    if find_spec("gradio") is None:
        raise CommandError(f"bdia app needs gradio, which is not installed: {INSTALL_HINT}")
    from ..app.work import Workbench, default_model, embedded_samples
    from ..editing.backends import embedded_models
    from ..editing.editor import load_editor
    from ..runtime import choose_device, torch_threads
    from .common import pickle_option

    model = args.model or default_model()
    choose_device(args.device)  # a bad --device is refused before anything loads
    embedded = model in embedded_models()
    if embedded and (args.revision is not None or args.allow_pickle):
        flag = "--revision" if args.revision is not None else "--allow-pickle"
        raise CommandError(f"{flag} applies to Stable Diffusion models; the {model} model ships with bdia")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing is sent anywhere
    from ..app import ui

    def stop(signum: int, frame: Any) -> None:  # a terminated server cleans up like an interrupted one
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # One torch thread for the tiny embedded models (per-op overhead dominates, as in the other commands).
    with torch_threads(1 if embedded else None), tempfile.TemporaryDirectory(prefix="bdia-app-") as workdir:
        editor = load_editor(model, dtype=args.dtype, device=args.device, revision=args.revision, **pickle_option(args))
        bench = Workbench(editor, workdir)
        samples = embedded_samples(model, os.path.join(workdir, "samples")) if embedded else []

        def started(url: str) -> None:
            print(f"bdia app: the {model} model at {url} (Ctrl+C to stop)", flush=True)

        try:
            ui.launch(
                bench, samples, host=args.host, port=args.port, share=args.share, steps=args.steps, on_start=started
            )
        except KeyboardInterrupt:
            print("bdia app: stopped", file=sys.stderr)
    return 0
