"""Create the project's virtualenv with pip, even on a Debian/Ubuntu Python without `python3-venv`.

Debian splits `ensurepip` into a separate package, so `python3 -m venv` fails on a fresh machine that has
only `python3`. In that case the venv is created without pip and pip is installed from its wheel on PyPI
(a wheel is a zip that can run itself: `python pip.whl/pip install pip`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
import venv
from pathlib import Path

PYPI_JSON = "https://pypi.org/pypi/pip/json"


def main(target: str) -> int:
    path = Path(target)
    python = path / "bin" / "python"
    if python.exists() and subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return 0
    try:
        import ensurepip  # noqa: F401

        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    except (ImportError, subprocess.CalledProcessError):
        print("bootstrap: ensurepip is missing; installing pip from its wheel", file=sys.stderr)
        venv.EnvBuilder(with_pip=False, clear=True).create(path)
        with urllib.request.urlopen(PYPI_JSON, timeout=60) as response:
            release = json.load(response)
        wheel = next(u for u in release["urls"] if u["packagetype"] == "bdist_wheel")
        with tempfile.TemporaryDirectory() as tmp:
            whl = Path(tmp) / wheel["filename"]
            with urllib.request.urlopen(wheel["url"], timeout=120) as response:
                whl.write_bytes(response.read())
            subprocess.run([python, f"{whl}/pip", "install", "--quiet", str(whl)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv"))
