"""Build Oríon 0.2.7's wheel into ``.wheels/`` on Python 3.12 and later (README, first lines).

Oríon 0.2.7 is on PyPI only as an sdist, and that sdist does not build on Python 3.12+: the
``versioneer.py`` its ``setup.py`` imports calls ``configparser.SafeConfigParser`` and
``ConfigParser.readfp``, both removed in 3.12 (pip runs that ``setup.py`` even to download
the sdist). Here pip downloads the sdist (hash-checked) and builds its wheel into
``.wheels/``, with the two names restored as aliases of their replacements (``ConfigParser``,
``read_file``) in the build's processes only (a ``sitecustomize`` on their ``PYTHONPATH``, so
no isolated build env); ``pip install --find-links .wheels`` then takes that wheel instead of
the sdist. Oríon's code is not copied into this repository, and nothing of the fix reaches the
installed Oríon but one line:

- ``orion frontend`` sets falcon's ``resp.body``, which falcon 4 removed (every page is a 500);
  falcon 3 does not build on 3.13, so 3.13 gets falcon 4 (pyproject.toml). The built wheel sets
  ``resp.text``, the same attribute under its falcon-3 name (``resp.body`` is its deprecated
  alias there), so the wheel works with either falcon.

On Python 3.10 and 3.11 pip builds the sdist as it is: this script only makes ``.wheels/``
(an empty directory, so ``--find-links`` has one) and says so. A wheel already in ``.wheels/``
is kept if it carries the patch.

Usage: ``python tools/orion_wheel.py [--out DIR]``, with the venv's Python (its pip is used).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.2.7"
SDIST_SHA256 = "e38abad90b9861bebf0b92fd54348c6d187a903072f7a8b79524464b1d563c7d"
OUT = Path(__file__).resolve().parent.parent / ".wheels"
# what setup.py needs importable (no isolated build env): its setup_requires and setuptools,
# within the project's own bound on setuptools (pyproject.toml)
BUILD_DEPS = ["setuptools>=60,<81", "appdirs", "pytest-runner"]
COMPAT = """\
# Python 3.12 removed these; Oríon 0.2.7's versioneer.py (imported by its setup.py) calls them
import configparser

if not hasattr(configparser, "SafeConfigParser"):
    configparser.SafeConfigParser = configparser.ConfigParser
    configparser.ConfigParser.readfp = configparser.ConfigParser.read_file
"""
FRONTEND = "src/orion/core/cli/frontend.py"
FRONTEND_MEMBER = "orion/core/cli/frontend.py"
FRONTEND_OLD = "                resp.body = content\n"
FRONTEND_NEW = "                resp.text = content\n"


def patch_frontend(text: str) -> str:
    """``orion frontend``'s one ``resp.body`` as ``resp.text``; refuses any other file."""
    if text.count(FRONTEND_OLD) != 1 or "resp.body" in text.replace(FRONTEND_OLD, ""):
        raise SystemExit(f"{FRONTEND}: not Oríon {VERSION}'s (expected one `resp.body = content`)")
    return text.replace(FRONTEND_OLD, FRONTEND_NEW)


def built(out: Path) -> Path | None:
    """The patched wheel already in ``out``, or None."""
    for wheel in sorted(out.glob(f"orion-{VERSION}-*.whl")):
        try:
            with zipfile.ZipFile(wheel) as zf:
                if FRONTEND_NEW in zf.read(FRONTEND_MEMBER).decode():
                    return wheel
        except (zipfile.BadZipFile, KeyError):
            pass
    return None


def pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, env=env)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")


def build(out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="orion-wheel-") as tmp_dir:
        tmp = Path(tmp_dir)
        compat, deps, dist = tmp / "compat", tmp / "build-deps", tmp / "dist"
        compat.mkdir()
        (compat / "sitecustomize.py").write_text(COMPAT)
        pip("install", "-q", "--target", str(deps), *BUILD_DEPS)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(compat), str(deps)]))
        build_args = ["--no-deps", "--no-build-isolation", "--use-pep517", "-q"]

        requirement = tmp / "requirement.txt"
        requirement.write_text(f"orion=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
        download = ["download", "--no-binary", ":all:", "-r", str(requirement), "-d", str(dist)]
        pip(*download, *build_args, env=env)
        (sdist,) = dist.glob(f"orion-{VERSION}.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        source = tmp / f"orion-{VERSION}"
        frontend = source / FRONTEND
        frontend.write_text(patch_frontend(frontend.read_text("utf-8")), "utf-8")

        pip("wheel", *build_args, "-w", str(dist), str(source), env=env)
        (wheel,) = dist.glob(f"orion-{VERSION}-*.whl")
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(wheel), out / wheel.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="wheel directory (.wheels/)")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    python = "{}.{}".format(*sys.version_info[:2])
    if sys.version_info < (3, 12):
        print(f"orion_wheel: nothing to build on Python {python} (pip builds the sdist)")
        return 0
    wheel = built(out)
    if wheel is not None:
        print(f"orion_wheel: {wheel} is already built")
        return 0
    print(f"orion_wheel: building Oríon {VERSION}'s wheel on Python {python}", flush=True)
    print(f"orion_wheel: built {build(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
