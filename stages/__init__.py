"""The pipeline's stages (``python -m stages.<name>``, from dvc.yaml).

Every stage imports the ``selfimprove`` of the workspace it runs in: this package is imported
before any stage module, and puts that workspace's ``src/`` first on ``sys.path``. DVC runs a
queued experiment (``dvc exp run --queue``) in a temporary copy of the workspace
(``.dvc/tmp/exps/...``), where the editable install would import the main checkout's ``src``
instead, the wrong code when the experiment changed it (docs/studies.md).
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if sys.path[:1] != [_SRC]:
    sys.path.insert(0, _SRC)
