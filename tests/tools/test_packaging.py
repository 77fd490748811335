"""Packaging: the wheel carries the Lua scripts and the entry point, and works once installed.

1. The wheel (built with hatchling, as ``pip install`` would) holds every ``lua/*.lua`` of the
   source tree under ``orion_track_redis/lua/``, every module of the package and the
   ``BaseStorageProtocol`` entry point.
2. Installed (``--no-deps``) into a fresh venv that borrows this venv's dependencies through a
   plain path in a ``.pth`` file (which does not process the ``.pth`` files found there, so the
   editable install of this checkout stays out of the way), the package imports from the fresh
   venv, finds its scripts there, and Oríon's own storage factory builds it and runs a trial
   through it.
3. The editable install (this interpreter) reads the scripts from the top-level ``lua/``.
4. ``tools/orion_wheel.py`` (the README's install commands) does nothing before Python 3.12,
   patches nothing but ``orion frontend``'s one line, and the installed Oríon's frontend sets
   an attribute that the installed falcon has.
5. The package is marked typed (``py.typed``, PEP 561, in the wheel), and its ``__all__`` lists
   only names that exist and import cleanly.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "orion_track_redis"
MARKER = "PACKAGING-OK"


def _run(cmd, timeout, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _clean_env() -> dict:
    """The environment of the subprocesses, without anything that could leak this checkout in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            "VIRTUAL_ENV",
            "PYTHONSAFEPATH",
            "__PYVENV_LAUNCHER__",
        )
        and not k.startswith("ORION_")
    }
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel once for the module (``python -m build``, else ``pip wheel --no-deps``)."""
    outdir = tmp_path_factory.mktemp("wheel")
    cwd = tmp_path_factory.mktemp("build-cwd")
    attempts = [
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(ROOT)],
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(outdir), str(ROOT)],
    ]
    logs = []
    for cmd in attempts:
        proc = _run(cmd, timeout=60, cwd=cwd, env=_clean_env())
        wheels = sorted(outdir.glob("orion_track_redis-*.whl"))
        if proc.returncode == 0 and len(wheels) == 1:
            return wheels[0]
        logs.append(
            f"$ {' '.join(cmd)}\nrc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    pytest.fail("could not build the wheel:\n" + "\n\n".join(logs))


def _source_lua_files() -> list[Path]:
    """The scripts (lua/*.lua), one per name in scripts.NAMES."""
    files = sorted((ROOT / "lua").glob("*.lua"))
    assert files, "no lua/*.lua in the source tree"
    return files


def _all_lua_files() -> list[Path]:
    """The scripts and the code they include (lua/include/*.lua)."""
    files = sorted((ROOT / "lua").rglob("*.lua"))
    assert any(p.parent.name == "include" for p in files), "no lua/include/*.lua"
    return files


# -- 1. wheel contents --------------------------------------------------------------------------
def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert len(entry_points) == 1, sorted(names)
        entry_points_txt = zf.read(entry_points[0]).decode()
        # the scripts are byte-identical to the source tree's
        arcnames = {
            f"{PACKAGE}/lua/{p.relative_to(ROOT / 'lua').as_posix()}": p for p in _all_lua_files()
        }
        for arcname, lua in arcnames.items():
            assert arcname in names, f"{arcname} missing from {wheel.name}: {sorted(names)}"
            assert zf.read(arcname) == lua.read_bytes(), f"{arcname} differs from {lua}"

    wheel_lua = {n for n in names if n.startswith(f"{PACKAGE}/lua/") and not n.endswith("/")}
    assert wheel_lua == set(arcnames)
    # the start-up hook that redacts every log line lands in site-packages itself
    with zipfile.ZipFile(wheel) as zf:
        assert (
            zf.read("orion_track_redis_redact.pth").decode().strip()
            == f"import {PACKAGE}.startup; {PACKAGE}.startup.run()"
        )

    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / PACKAGE).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    assert f"{PACKAGE}/__init__.py" in modules
    missing = [m for m in modules if m not in names]
    assert not missing, f"modules missing from {wheel.name}: {missing}"
    # nothing from the tests, examples or the top-level lua/ leaks in at the wheel's root
    assert not [n for n in names if n.startswith(("tests/", "examples/", "lua/", "benchmarks/"))]

    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in entry_points_txt.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = (part.strip() for part in line.split("=", 1))
            current[key] = value
    assert sections.get("BaseStorageProtocol", {}).get("redis") == "orion_track_redis:Redis", (
        entry_points_txt
    )


# -- 2. installed wheel in a fresh venv ---------------------------------------------------------
CHECK_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    venv = Path(sys.argv[1]).resolve()
    repo = Path(sys.argv[2]).resolve()

    def inside(path, root):
        try:
            Path(path).resolve().relative_to(root)
            return True
        except ValueError:
            return False

    # the plain path in deps.pth did not activate the editable install of the checkout
    assert not any(Path(p).resolve() == repo for p in sys.path if p), sys.path

    import orion_track_redis
    from orion_track_redis.store import scripts

    assert inside(orion_track_redis.__file__, venv), orion_track_redis.__file__
    assert not inside(orion_track_redis.__file__, repo), orion_track_redis.__file__
    lua_dir = scripts.lua_dir()
    assert inside(lua_dir, venv), lua_dir
    assert lua_dir.name == "lua" and lua_dir.parent.name == "orion_track_redis", lua_dir
    assert sorted(p.stem for p in lua_dir.glob("*.lua")) == sorted(scripts.NAMES)

    from orion.core.worker.trial import Trial
    from orion.storage.base import setup_storage

    storage = setup_storage({"type": "redis", "uri": "fakeredis://pkg"})
    assert type(storage).__module__.startswith("orion_track_redis"), type(storage)
    assert inside(sys.modules[type(storage).__module__].__file__, venv)

    config = {
        "name": "packaging",
        "version": 1,
        "space": {"x": "uniform(0, 10)"},
        "algorithm": {"random": {"seed": 1}},
        "metadata": {"user": "packager", "orion_version": "0.2.7"},
        "refers": {"parent_id": None, "root_id": None, "adapter": []},
        "max_trials": 10,
    }
    storage.create_experiment(config)
    exp_id = config["_id"]
    (stored,) = storage.fetch_experiments({"name": "packaging"})
    assert stored["_id"] == exp_id and stored["max_trials"] == 10, stored

    class Exp:
        def __init__(self, uid):
            self.id = self._id = uid

    trial = Trial(experiment=exp_id, status="new",
                  params=[{"name": "/x", "type": "real", "value": 1.0}])
    storage.register_trial(trial)
    assert [t.id for t in storage.fetch_trials(uid=exp_id)] == [trial.id]

    reserved = storage.reserve_trial(Exp(exp_id))
    assert reserved is not None
    assert reserved.id == trial.id and reserved.status == "reserved", reserved
    assert reserved.params == {"/x": 1.0}, reserved.params
    assert storage.reserve_trial(Exp(exp_id)) is None
    print("%s", orion_track_redis.__file__, lua_dir)
"""  # noqa: UP031 - the script's own braces would need doubling for str.format
    % MARKER
)


def _purelib_of(python: Path, env) -> Path:
    proc = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        timeout=30,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def test_installed_wheel_in_fresh_venv(wheel, tmp_path):
    env = _clean_env()
    venv = tmp_path / "venv"
    proc = _run([sys.executable, "-m", "venv", str(venv)], timeout=60, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    assert python.exists(), list((venv / "bin").iterdir())

    proc = _run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # this venv's dependencies, as plain path lines (the .pth files there are not processed)
    fresh_site = _purelib_of(python, env)
    assert fresh_site.is_relative_to(venv), fresh_site
    paths = sysconfig.get_paths()
    current_sites = list(dict.fromkeys(paths[k] for k in ("purelib", "platlib")))
    (fresh_site / "deps.pth").write_text("".join(f"{p}\n" for p in current_sites))

    script = tmp_path / "check_installed.py"
    script.write_text(CHECK_SCRIPT)
    proc = _run([str(python), str(script), str(venv), str(ROOT)], timeout=60, cwd=tmp_path, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert MARKER in proc.stdout, output


# -- 3. editable install --------------------------------------------------------------------------
def test_editable_install_finds_the_scripts():
    import orion_track_redis
    from orion_track_redis.store import scripts

    assert Path(orion_track_redis.__file__).resolve().parent == ROOT / PACKAGE
    assert scripts.lua_dir().resolve() == (ROOT / "lua").resolve()

    on_disk = {p.stem for p in _source_lua_files()}
    assert len(set(scripts.NAMES)) == len(scripts.NAMES), scripts.NAMES
    assert on_disk - set(scripts.NAMES) == set(), "lua files not in scripts.NAMES"
    assert set(scripts.NAMES) - on_disk == set(), "scripts.NAMES without a lua file"
    for name in scripts.NAMES:
        text = (ROOT / "lua" / f"{name}.lua").read_text(encoding="utf-8")
        for include in re.findall(r"^-- @include (\S+)$", text, flags=re.M):
            pasted = (ROOT / "lua" / "include" / include).read_text(encoding="utf-8")
            text = text.replace(f"-- @include {include}\n", pasted)
        assert scripts.source(name) == text


def test_includes_are_pasted_and_lines_map_back_to_their_files():
    """Both fetch scripts share lua/include/trial_json.lua; every line of the text sent to
    Redis maps back to the same line of the file it came from (error messages name it)."""
    from orion_track_redis.store import scripts

    users = [
        n
        for n in scripts.NAMES
        if "-- @include trial_json.lua" in (ROOT / "lua" / f"{n}.lua").read_text()
    ]
    assert sorted(users) == ["fetch_changes", "fetch_docs"]
    for name in scripts.NAMES:
        source = scripts.source(name)
        assert not re.search(r"^-- @include", source, flags=re.M)
        for number, line in enumerate(source.splitlines(), 1):
            path, in_file = scripts.origin(name, number)
            assert (ROOT / "lua" / path).read_text().splitlines()[in_file - 1] == line
    assert scripts.origin("fetch_docs", 10_000) == ("fetch_docs.lua", 10_000)


@pytest.mark.parametrize("lua", _source_lua_files(), ids=lambda p: p.name)
def test_lua_header(lua):
    """Each script documents its KEYS, ARGV and return value in its first 15 lines."""
    with lua.open(encoding="utf-8") as fh:
        head = "".join(line for _, line in zip(range(15), fh))
    for word in ("KEYS", "ARGV", "Returns"):
        assert word in head, f"{lua.name}: no {word} in its header"


# -- 4. tools/orion_wheel.py ----------------------------------------------------------------------
ORION_WHEEL = ROOT / "tools" / "orion_wheel.py"


def _orion_wheel_module():
    spec = importlib.util.spec_from_file_location("orion_wheel", ORION_WHEEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="on 3.12+ it builds Oríon's wheel (.ci/run's other Pythons do)",
)
def test_orion_wheel_does_nothing_before_3_12(tmp_path):
    out = tmp_path / "wheels"
    proc = _run(
        [sys.executable, str(ORION_WHEEL), "--out", str(out)],
        timeout=60,
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to build" in proc.stdout, proc.stdout
    assert out.is_dir() and list(out.iterdir()) == []  # a --find-links directory, empty


def test_orion_wheel_patches_the_frontend_line_only():
    tool = _orion_wheel_module()
    text = "def on_get(self, req, resp):\n" + tool.FRONTEND_OLD + "    return\n"
    assert tool.patch_frontend(text) == text.replace("resp.body", "resp.text")
    for other in ("no such line\n", text + tool.FRONTEND_OLD, text + "resp.body = b''\n"):
        with pytest.raises(SystemExit, match="not Oríon"):
            tool.patch_frontend(other)


def test_the_installed_orion_frontend_suits_the_installed_falcon():
    """falcon 4 (Python 3.13) removed ``resp.body``: there Oríon must be the wheel of
    tools/orion_wheel.py, whose frontend sets ``resp.text``."""
    from importlib.metadata import version  # not `import falcon`: falcon 3 imports cgi (3.12)

    frontend = Path(importlib.util.find_spec("orion.core.cli.frontend").origin).read_text()
    if int(version("falcon").split(".")[0]) >= 4:
        assert "resp.body" not in frontend and "resp.text = content" in frontend, (
            "Oríon's frontend sets resp.body, which falcon 4 removed: install Oríon from "
            "tools/orion_wheel.py's .wheels/ (README)"
        )
    else:
        assert "resp.body = content" in frontend or "resp.text = content" in frontend


# -- 5. typed package, public names ---------------------------------------------------------------
def test_wheel_marks_the_package_typed(wheel):
    assert (ROOT / PACKAGE / "py.typed").is_file()
    with zipfile.ZipFile(wheel) as zf:
        assert f"{PACKAGE}/py.typed" in zf.namelist(), sorted(zf.namelist())


PUBLIC_NAMES_SCRIPT = textwrap.dedent(
    """
    import warnings

    warnings.simplefilter("error")
    # Oríon 0.2.7's own warnings (pyproject.toml's filterwarnings), not the package's
    warnings.filterwarnings("ignore", module=r"(orion|pkg_resources)(\\.|$)")

    import orion_track_redis

    names = orion_track_redis.__all__
    assert names and len(set(names)) == len(names), names
    for name in names:
        value = getattr(orion_track_redis, name)  # loaded on first use (__init__'s __getattr__)
        if name != "__version__":
            assert value.__module__.startswith("orion_track_redis."), (name, value)
    namespace = {}
    exec("from orion_track_redis import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(names), sorted(namespace)
    print("PUBLIC-OK", *names)
    """
)


def test_public_names_exist_and_import_cleanly(tmp_path):
    """``orion_track_redis.__all__`` in a fresh interpreter, warnings being errors: every name
    resolves, to an object of the package, and ``import *`` binds exactly those names."""
    proc = _run(
        [sys.executable, "-c", PUBLIC_NAMES_SCRIPT],
        timeout=120,
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PUBLIC-OK" in proc.stdout, proc.stdout + proc.stderr
