"""Library caches kept out of the user's home folder.

``import monai`` imports ``matplotlib.pyplot`` (``monai.utils.jupyter_utils``), which writes its font list to
``$HOME/.cache/matplotlib`` (or ``$MPLCONFIGDIR``) the first time. ASSFT writes only where it is told to (``--out``,
``--store``, a job folder): the worker points the cache into its job folder (:func:`ASSFTActive.worker.run_job`), and
the command line, which has no such folder, points it to a temporary folder of its own, removed when the process
exits. A user's own ``MPLCONFIGDIR`` is left alone. Rebuilding the font list costs nothing measurable (a few fonts).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import MutableMapping, Optional

__all__ = ["MATPLOTLIB_VARIABLE", "keep_library_caches_out_of_home"]

MATPLOTLIB_VARIABLE = "MPLCONFIGDIR"


def keep_library_caches_out_of_home(environ: Optional[MutableMapping[str, str]] = None) -> Optional[Path]:
    """Point matplotlib's cache to a temporary folder removed at exit, unless the user chose one.

    Acts only before matplotlib is imported (it reads the variable then), so call it before anything imports MONAI.

    Returns:
        the temporary folder, or ``None`` when the variable was already set or matplotlib already loaded.
    """
    environ = os.environ if environ is None else environ
    if environ.get(MATPLOTLIB_VARIABLE) or "matplotlib" in sys.modules:
        return None
    folder = Path(tempfile.mkdtemp(prefix="assft-matplotlib-"))
    environ[MATPLOTLIB_VARIABLE] = str(folder)
    atexit.register(shutil.rmtree, str(folder), True)
    return folder
