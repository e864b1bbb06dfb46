#!/usr/bin/env python3
"""Execute every notebook in notebooks/ headlessly against a run folder, as CI does.

    python scripts/run_notebooks.py RUN_DIR [RUN_DIR_B]

Needs polars, matplotlib, nbconvert and ipykernel (tests/fixtures/notebooks/requirements.txt
pins them; the tests install them into $SWITCHYARD_HOME/peers/notebooks). The executed copies,
with their outputs, go to RUN_DIR/notebooks/. Exits non-zero when a cell fails.
"""
import os
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
run = Path(sys.argv[1]).resolve()
run_b = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else run
out = run / "notebooks"
out.mkdir(parents=True, exist_ok=True)
(run / "report").mkdir(exist_ok=True)
env = dict(os.environ, SWITCHYARD_RUN=str(run), SWITCHYARD_RUN_B=str(run_b), MPLBACKEND="Agg")
failed = []
for nb in sorted((root / "notebooks").glob("*.ipynb")):
    cmd = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute",
           "--ExecutePreprocessor.timeout=300", "--output-dir", str(out), str(nb)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(("ok     " if r.returncode == 0 else "FAILED ") + nb.name, flush=True)
    if r.returncode != 0:
        failed.append(nb.name)
        print(r.stderr[-3000:], file=sys.stderr)
sys.exit(1 if failed else 0)
