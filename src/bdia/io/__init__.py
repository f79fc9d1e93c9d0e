"""Files in and out: atomic writes (:mod:`.files`), saved inversions (:mod:`.saved`), images (:mod:`.images`)
and safe model loading (:mod:`.loading`).

``import bdia.io`` imports only the atomic-write helpers; the other modules load Pillow, safetensors
or diffusers inside their functions.
"""

from .files import atomic_path, check_output_dir, check_writable, remove_stale_temporaries, write_text

__all__ = ["atomic_path", "check_output_dir", "check_writable", "remove_stale_temporaries", "write_text"]
