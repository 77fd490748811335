"""`orion plot` on an experiment stored in Redis: the four plot kinds (issue 16, part 2).

HTML always (each kind); PNG, JPEG and PDF (each kind in one of them) where a Chromium is
installed for kaleido (plotly's image export starts a headless Chrome/Chromium: Debian's
``chromium`` on PATH, or ``BROWSER_PATH``); without one the image formats skip, saying so.
The plotted numbers are read back from the HTML and compared with the stored trials.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import pytest

pytestmark = pytest.mark.slow
ORION = str(Path(sys.executable).with_name("orion"))
KINDS = ("regret", "parallel_coordinates", "lpi", "partial_dependencies")
NAME = "plotted"


@pytest.fixture(scope="module")
def stored(redis_server):
    """A 12-trial random search run through the Python API on the fixtures' redis-server:
    (uri, completed trials in suggestion order)."""
    from orion.client import build_experiment

    uri = f"{redis_server.url}/0?prefix=plots-{uuid.uuid4().hex[:8]}"
    experiment = build_experiment(
        NAME,
        space={"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"},
        algorithm={"random": {"seed": 3}},
        max_trials=12,
        storage={"type": "redis", "uri": uri},
    )
    experiment.workon(
        lambda x, y: [
            {"name": "objective", "type": "objective", "value": (x - 2) ** 2 + (y + 1) ** 2}
        ],
        max_trials=12,
    )
    from orion_track_redis import Redis

    storage = Redis(uri=uri)
    (doc,) = storage.fetch_experiments({"name": NAME})
    trials = [t for t in storage.fetch_trials(uid=doc["_id"]) if t.status == "completed"]
    assert len(trials) == 12
    return uri, sorted(trials, key=lambda t: t.submit_time)


def _plot(uri, kind, fmt, out_dir: Path) -> Path:
    out = out_dir / f"{kind}.{fmt}"
    env = dict(os.environ, ORION_REDIS_URI="", ORION_STORAGE_TYPE="redis", ORION_DB_ADDRESS=uri)
    proc = subprocess.run(
        [ORION, "plot", kind, "-n", NAME, "-t", fmt, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"orion plot {kind} -t {fmt}:\n{proc.stdout}\n{proc.stderr}"
    return out


def _run_all(uri, jobs, out_dir):
    """``orion plot`` for each (kind, fmt), two at a time (each starts Oríon, and a Chromium
    for the image formats)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(lambda job: _plot(uri, *job, out_dir), jobs)))


def _figure(html: str) -> tuple[list, dict]:
    """(data, layout) of the figure plotly's write_html embeds in ``Plotly.newPlot(...)``."""
    rest = html[html.index("Plotly.newPlot(") + len("Plotly.newPlot(") :].lstrip()
    decoder, parts = json.JSONDecoder(), []
    for _ in range(3):  # div id, data, layout
        value, end = decoder.raw_decode(rest)
        parts.append(value)
        rest = rest[end:].lstrip().lstrip(",").lstrip()
    return _arrays(parts[1]), _arrays(parts[2])


def _arrays(value):
    """Plotly >= 6 writes numpy arrays as {"dtype", "bdata"} (base64): decode them."""
    if isinstance(value, dict):
        if set(value) >= {"dtype", "bdata"}:
            return numpy.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_arrays(v) for v in value]
    return value


def _title(layout) -> str:
    title = layout.get("title")
    return title.get("text", "") if isinstance(title, dict) else str(title or "")


def test_four_plot_kinds_as_html_with_the_stored_values(stored, tmp_path):
    uri, trials = stored
    paths = _run_all(uri, [(kind, "html") for kind in KINDS], tmp_path)
    figures = {kind: _figure(paths[kind, "html"].read_text()) for kind in KINDS}
    xs = [t.params["x"] for t in trials]
    ys = [t.params["y"] for t in trials]
    rounded = lambda values: [float(f"{v:.4g}") for v in values]  # noqa: E731 - as plotted
    objectives = [t.objective.value for t in trials]

    data, layout = figures["regret"]
    assert _title(layout) == f"Regret for experiment '{NAME}'"
    points, best = data
    assert [row[0] for row in points["customdata"]] == [t.id for t in trials]
    assert points["y"] == pytest.approx(objectives)
    assert best["y"] == pytest.approx(list(numpy.minimum.accumulate(objectives)))

    data, layout = figures["parallel_coordinates"]
    assert _title(layout) == f"Parallel Coordinates Plot for experiment '{NAME}'"
    dims = {d["label"]: d["values"] for d in data[0]["dimensions"]}
    assert dims["x"] == pytest.approx(rounded(xs)) and dims["y"] == pytest.approx(rounded(ys))
    assert data[0]["line"]["color"] == pytest.approx(objectives)

    data, layout = figures["lpi"]
    assert _title(layout) == f"LPI for experiment '{NAME}'"
    assert data[0]["x"] == ["x", "y"] and sum(data[0]["y"]) == pytest.approx(1)

    data, layout = figures["partial_dependencies"]
    assert _title(layout) == f"Partial dependencies for experiment '{NAME}'"
    grids = [trace["x"] for trace in data if trace.get("mode") == "lines"]
    assert grids and all(min(g) == pytest.approx(-5) and max(g) == pytest.approx(5) for g in grids)
    # the stored trials are scattered on each 1-D dependency (against their objective) and
    # on the 2-D one (x against y)
    scatters = [(t["x"], t["y"]) for t in data if t.get("mode") == "markers"]
    assert sorted(scatters) == sorted(
        [(rounded(xs), objectives), (rounded(ys), objectives), (rounded(xs), rounded(ys))]
    )


def _browser():
    path = (
        os.environ.get("BROWSER_PATH")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if not path:
        pytest.skip(
            "orion plot's PNG/JPEG/PDF need a Chrome or Chromium for kaleido "
            "(apt-get install -y chromium, or BROWSER_PATH=/path/to/chrome); "
            "none found, image formats not tested"
        )
    return path


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_image_formats_through_chromium(stored, tmp_path):
    """Each kind in one image format (each call starts a Chromium: ~5 s)."""
    _browser()
    uri, _ = stored
    jobs = [
        ("regret", "png"),
        ("partial_dependencies", "png"),
        ("lpi", "jpeg"),
        ("parallel_coordinates", "pdf"),
    ]
    paths = _run_all(uri, jobs, tmp_path)
    for kind in ("regret", "partial_dependencies"):
        data = paths[kind, "png"].read_bytes()
        assert _png_size(data) == (700, 500), kind  # plotly's default size, scale 1
        assert len(data) > 10_000, f"{kind}.png is {len(data)} bytes: blank?"
    jpeg = paths["lpi", "jpeg"].read_bytes()
    assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) > 10_000
    pdf = paths["parallel_coordinates", "pdf"].read_bytes()
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-1024:] and len(pdf) > 10_000
