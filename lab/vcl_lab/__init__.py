"""The simulated lab: systemd-nspawn machines on a guarded host bridge (`vcl lab up|down|status`).

Public API::

    from vcl_lab import up, down, status, is_clean, ensure_images, LabState, LabError
    state = up("vcl0", slaves=2)          # builds the image once, boots, waits for ssh + libvirtd
    status("vcl0")                        # dict, as `vcl lab status --json` prints it
    down("vcl0")                          # removes everything, also after a crash
"""

from vcl_lab._util import CACHE_DIR, STATE_ROOT, LabError
from vcl_lab.image import Images, ensure_images
from vcl_lab.ops import down, is_clean, preflight, up, wait_ready
from vcl_lab.state import DEFAULT_NAME, LabState, Machine
from vcl_lab.status import status

__all__ = [
    "CACHE_DIR",
    "DEFAULT_NAME",
    "STATE_ROOT",
    "Images",
    "LabError",
    "LabState",
    "Machine",
    "down",
    "ensure_images",
    "is_clean",
    "preflight",
    "status",
    "up",
    "wait_ready",
]
