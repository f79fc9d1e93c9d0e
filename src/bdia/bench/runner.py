"""Run the workloads, then write report.md, the PNG plots and results.json into one folder.

A workload is a module of this package that defines

- ``run(cfg: BenchConfig, log) -> dict``: its measurements, JSON-able (``{"skipped": reason}`` when it
  cannot run here, e.g. an optional dependency is missing);
- ``section(results: dict) -> str``: its markdown section (starting with a ``##`` heading), from the
  dict ``run`` returned or its copy read back from results.json;
- optionally ``plots(results: dict, out_dir: Path, overwrite: bool) -> list[str]``: the files it
  wrote into ``out_dir``;
- optionally ``REQUIRES``: module -> what it is needed for (:mod:`.requires`). Every selected workload's
  modules are checked before the first one runs; a workload that cannot run is skipped with a note.

results.json is rewritten (atomically) after every workload, so a failure loses only the workload that
failed: ``--update --only`` reruns the rest into the same folder, ``--render`` writes the report.

:data:`WORKLOADS` (in :mod:`.config`) lists them in report order; adding a workload is adding its module's name there.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from ..io.files import check_writable, write_text
from .config import WORKLOADS, BenchConfig
from .measures import finite_or_none
from .report import render
from .requires import missing_note

REQUIRED = {"matplotlib": "the plots", "scipy": "the exact ODE references"}  # module -> what needs it


def workload(name: str) -> ModuleType:
    """The module of a registered workload."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    return importlib.import_module(f"{__package__}.{name}")


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a folder that cannot be written or (without ``overwrite``) holds earlier output."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    for name in ("report.md", "results.json"):
        check_writable(out / name, overwrite)
    if not overwrite and out.is_dir():
        for png in sorted(out.glob("*.png")):
            check_writable(png, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write into {out} ({e.strerror or e}); choose another --out") from None


def check_requirements() -> None:
    missing = [f"{mod} ({why})" for mod, why in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"bdia bench needs {', '.join(missing)}; pip install 'bdia[bench]'")


def unavailable(names: Iterable[str]) -> dict[str, str]:
    """Workload -> why it cannot run here (a missing optional module), for the workloads in ``names``."""
    notes = {}
    for name in names:
        note = missing_note(getattr(workload(name), "REQUIRES", {}))
        if note:
            notes[name] = note
    return notes


def run_workloads(
    cfg: BenchConfig,
    log: Callable = print,
    skip: dict[str, str] | None = None,
    done: Callable[[dict[str, Any], list[str]], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.workloads`` in order; ``skip`` (name -> reason) are recorded as skipped without running.
    ``done(results_so_far, pending_names)`` is called after each workload, to save what is finished."""
    skip = skip or {}
    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    names = list(cfg.workloads or ())
    for i, name in enumerate(names):
        if name in skip:
            out[name] = {"skipped": skip[name]}
            continue
        log(f"[{name}]")
        t0 = time.perf_counter()
        out[name] = workload(name).run(cfg, log=log)
        seconds[name] = time.perf_counter() - t0
        if done is not None:
            done({"workloads": dict(out), "seconds": dict(seconds)}, names[i + 1 :])
    return {"workloads": out, "seconds": seconds}


def environment() -> dict[str, Any]:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "platform": platform.system(),
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return env


def write_outputs(results: dict[str, Any], out: Path, overwrite: bool) -> list[str]:
    """The plots, then report.md, of every workload that ran; returns the file names written."""
    made: list[str] = []
    sections: dict[str, str] = {}
    for name, wl in results["workloads"].items():
        if "skipped" in wl:
            continue
        mod = workload(name)
        if hasattr(mod, "plots"):
            made += mod.plots(wl, out, overwrite)
        sections[name] = mod.section(wl)
    write_text(out / "report.md", render(results, sections), overwrite)
    return made + ["report.md"]


def _restore_inf(d: dict[str, Any]) -> dict[str, Any]:
    """results.json writes non-finite errors as null; read them back as inf (diverged)."""
    if {"max", "mean", "rms"} <= d.keys():
        return {k: (math.inf if v is None else v) for k, v in d.items()}
    return d


def render_folder(out_dir: str | Path, log: Callable = print) -> dict[str, Any]:
    """Rewrite report.md and the plots of ``out_dir`` from its results.json (no measurement)."""
    check_requirements()
    out = Path(out_dir)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"), object_hook=_restore_inf)
    unknown = [name for name in results["workloads"] if name not in WORKLOADS]
    if unknown:
        raise ValueError(f"{out / 'results.json'} holds workloads this version does not know: {unknown}")
    results["rendered_from_json"] = True
    try:
        results["files"] = write_outputs(results, out, overwrite=True)
    except KeyError as e:
        raise ValueError(
            f"{out / 'results.json'} lacks the entry {e}: another version of bdia bench wrote it; "
            "run the benchmark again instead of --render"
        ) from None
    log(f"rendered {out / 'report.md'} from {out / 'results.json'}")
    return results


def _previous(out: Path, cfg: BenchConfig) -> dict[str, Any]:
    """``out``'s results.json, to update: refused unless it was measured with the same mode and seed."""
    path = out / "results.json"
    if not path.is_file():
        raise ValueError(f"--update needs an earlier run's {path}; run without --update first")
    old = json.loads(path.read_text(encoding="utf-8"), object_hook=_restore_inf)
    mine = cfg.to_dict()
    for key in ("mode", "seed"):
        if old.get("config", {}).get(key) != mine[key]:
            raise ValueError(
                f"{path} was measured with {key} {old.get('config', {}).get(key)!r}, this run uses "
                f"{mine[key]!r}; update only with the same {key}"
            )
    unknown = [name for name in old.get("workloads", {}) if name not in WORKLOADS]
    if unknown:
        raise ValueError(f"{path} holds workloads this version does not know: {unknown}; run them all again")
    return old


def run_bench(
    cfg: BenchConfig, out_dir: str | Path, overwrite: bool = False, log: Callable = print, update: bool = False
) -> dict[str, Any]:
    """Run every workload of ``cfg`` (all registered ones when ``cfg.workloads`` is None) and write
    results.json, the plots and report.md into ``out_dir``. With ``update``, the workloads run replace
    theirs in ``out_dir``'s results.json and the other workloads' results are kept (same mode and seed)."""
    import torch

    from ..runtime import torch_threads

    if cfg.workloads is not None and not cfg.workloads:
        raise ValueError(f"no workload to run; choose from {', '.join(WORKLOADS)}")
    for name in cfg.workloads or ():
        workload(name)  # refuses unknown names
    cfg = replace(cfg, workloads=tuple(w for w in WORKLOADS if cfg.workloads is None or w in cfg.workloads))
    check_requirements()
    out = Path(out_dir)
    previous = _previous(out, cfg) if update else None
    check_output_folder(out, overwrite)
    skip = unavailable(cfg.workloads or ())  # before the first workload runs: nothing is lost to a missing module
    for name, note in skip.items():
        log(f"[{name}] skipped: {note}")
    env = environment()
    saved = {"any": False}

    def save(run: dict[str, Any], pending: list[str]) -> None:
        """results.json with every workload finished so far (and the earlier run's, with ``update``)."""
        c, r = _combine(cfg, previous, run)
        results = {"config": c.to_dict(), "environment": env, **r}
        if pending:
            results["incomplete"] = pending
        text = json.dumps(finite_or_none(results), indent=1, sort_keys=False, default=str) + "\n"
        write_text(out / "results.json", text, overwrite or saved["any"])
        saved["any"] = True

    torch.manual_seed(cfg.seed)
    with torch_threads(cfg.threads):
        try:
            run = run_workloads(cfg, log, skip=skip, done=save)
        except BaseException:
            if saved["any"]:
                log(f"bdia bench: stopped; the workloads finished before are in {out / 'results.json'}")
            raise
    cfg, run = _combine(cfg, previous, run)
    results = {"config": cfg.to_dict(), "environment": env, **run}
    # The numbers first: a failure while plotting or rendering leaves them for `bdia bench --render`.
    save(run, [])
    results["files"] = ["results.json"] + write_outputs(results, out, overwrite)
    return results


def _combine(
    cfg: BenchConfig, previous: dict[str, Any] | None, run: dict[str, Any]
) -> tuple[BenchConfig, dict[str, Any]]:
    """With ``update``, keep the earlier run's other workloads' results, in registry order."""
    if previous is None:
        return cfg, run
    # a workload skipped now (a module missing) keeps the earlier run's results
    fresh = {k: v for k, v in run["workloads"].items() if "skipped" not in v or k not in previous["workloads"]}
    kept = {**previous["workloads"], **fresh}
    run = {
        "workloads": {name: kept[name] for name in WORKLOADS if name in kept},
        "seconds": {**previous.get("seconds", {}), **run["seconds"]},
    }
    return replace(cfg, workloads=tuple(run["workloads"])), run
