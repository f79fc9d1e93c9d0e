"""Write the small sample images in examples/images/ that the README's commands use.

Every image is held out from training: digits from the embedded digits model's held-out split (the
first held-out digit of each class), and one scene from the scenes renderer's held-out seeds. The
files are deterministic, so rerunning this script reproduces them byte for byte:

    python scripts/make_example_images.py              # refuses to replace existing files
    python scripts/make_example_images.py --overwrite
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from bdia.io.files import atomic_path

OUT = Path(__file__).resolve().parents[1] / "examples" / "images"
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_images() -> dict[int, np.ndarray]:
    """The first held-out digit of each class, 16x16 uint8, light on dark as the model sees them."""
    from bdia import digits

    test = digits.load_digits("test")
    out: dict[int, np.ndarray] = {}
    for image, label in zip(test.images, test.labels.tolist()):
        if label not in out:
            out[label] = image[0].numpy()
    return dict(sorted(out.items()))


def scene_image() -> tuple[np.ndarray, str]:
    """The first held-out scene (32x32 RGB) and its caption."""
    from bdia.scenes.render import caption, held_out_scenes, render

    scene = held_out_scenes(1)[0]
    return render(scene), caption(scene)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write(path: Path, data: bytes, overwrite: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite) as tmp:
        Path(tmp).write_bytes(data)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="folder (default examples/images/)")
    ap.add_argument("--overwrite", action="store_true", help="replace the existing images")
    args = ap.parse_args()
    out: Path = args.out
    found = digit_images()
    write(out / "three.png", png_bytes(found[3]), args.overwrite)
    rows = []
    for label, image in found.items():  # one held-out digit per class, for the data-set commands
        name = f"{label}_{NAMES[label]}.png"
        write(out / "digits" / name, png_bytes(image), args.overwrite)
        rows.append({"path": f"digits/{name}", "prompt": str(label)})
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=["path", "prompt"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write(out / "digits.csv", text.getvalue().encode(), args.overwrite)  # the same digits as a list with prompts
    image, text_caption = scene_image()
    write(out / "scene.png", png_bytes(image), args.overwrite)
    write(out / "scene.txt", (text_caption + "\n").encode(), args.overwrite)


if __name__ == "__main__":
    main()
