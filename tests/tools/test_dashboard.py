"""Oríon's web dashboard on this backend, in a real browser (issue 16, part 1).

Two `orion hunt` workers fill an experiment on a redis-server of the fixtures; `orion serve`
(the REST API, on this storage) and `orion frontend` (the prebuilt dashboard) run on free
loopback ports, and headless Chromium (Debian's chromium + chromium-driver, through selenium)
opens the dashboard: the experiment is listed, the trials table shows every stored trial with
its stored parameters and objective, and the visualizations page draws the plots the API
computed from the stored trials.

The dashboard build shipped in Oríon 0.2.7's wheel calls its API at http://127.0.0.1:8000
whatever ``orion frontend -b`` says (the address is compiled in; the ``-b`` placeholder is not
in that build), so the browser goes through a small forward proxy of this test that sends
127.0.0.1:8000 to our `orion serve` port and answers 502 to anything else (no Internet, and
no need for port 8000 to be free).

``ORION_REDIS_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also writes the trials page there.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from helpers import hunt_config
from orion_track_redis import Redis
from orion_track_redis.testing import free_port

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BIN = Path(sys.executable).parent
DASHBOARD_API = "127.0.0.1:8000"  # compiled into Oríon 0.2.7's dashboard build
NAME = "dashboard-demo"


def _browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "the dashboard test needs Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver; .ci/run installs them): "
            f"chromium={chromium}, chromedriver={driver}"
        )
    return chromium, driver


class Proxy:
    """Forward HTTP proxy: ``routes`` maps the host:port the browser asks for to the
    (host, port) to forward to; anything else gets 502. ``requests`` logs (host:port, path,
    status)."""

    HOP = {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "content-length",
    }

    def __init__(self, routes: dict[str, tuple[str, int]]):
        self.routes, self.requests = routes, []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                target = proxy.routes.get(url.netloc)
                status, headers, data = 502, [], b""
                if target is not None:
                    conn = http.client.HTTPConnection(*target, timeout=120)
                    conn.request(
                        self.command,
                        url.path + (f"?{url.query}" if url.query else ""),
                        body=body,
                        headers={
                            k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP
                        },
                    )
                    reply = conn.getresponse()
                    status, headers, data = reply.status, reply.getheaders(), reply.read()
                    conn.close()
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in proxy.HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                proxy.requests.append((url.netloc, url.path, status))

            do_GET = do_POST = do_HEAD = do_OPTIONS = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _wait_http(url: str, proc, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.read()
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{url} did not answer ({exc}); process exit code {proc.poll()}"
                ) from exc
            time.sleep(0.2)


def _hunt(tmp_path, uri) -> None:
    """Two `orion hunt` workers, 10 trials, on the redis-server of the fixtures."""
    config = hunt_config(tmp_path / "orion_config.yaml", uri, tmp_path / "trials", seed=7)
    cmd = [
        str(BIN / "orion"),
        "hunt",
        "--config",
        str(config),
        "-n",
        NAME,
        "--max-trials",
        "10",
        sys.executable,
        str(EXAMPLES / "objective.py"),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    env = dict(os.environ, ORION_REDIS_URI="")
    workers = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
        )
        for _ in range(2)
    ]
    for worker in workers:
        out = worker.communicate(timeout=300)[0]
        assert worker.returncode == 0, out[-3000:]


def _num(value: float) -> str:
    """A parameter as the trials table prints it (4 significant digits)."""
    return f"{value:.4g}"


def test_dashboard_shows_the_hunt_stored_on_redis(redis_server, tmp_path):
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    uri = f"{redis_server.url}/0?prefix=dash-{uuid.uuid4().hex[:8]}"
    _hunt(tmp_path, uri)
    storage = Redis(uri=uri)
    (exp,) = storage.fetch_experiments({"name": NAME})
    trials = storage.fetch_trials(uid=exp["_id"])
    completed = [t for t in trials if t.status == "completed"]
    assert len(completed) >= 10

    api_port, front_port = free_port(), free_port()
    front_origin = f"localhost:{front_port}"  # `orion frontend` binds localhost
    serve_config = tmp_path / "serve.yaml"
    serve_config.write_text(
        "storage:\n  type: redis\n  database:\n"
        f'    host: "{uri}"\n'
        f'gunicorn:\n  bind: "127.0.0.1:{api_port}"\n  workers: 1\n'
        f'frontends_uri: ["http://{front_origin}"]\n'
    )
    env = dict(os.environ, ORION_REDIS_URI="")
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("serve", "frontend")}
    serve = subprocess.Popen(
        [str(BIN / "orion"), "serve", "-c", str(serve_config)],
        env=env,
        stdout=logs["serve"],
        stderr=subprocess.STDOUT,
    )
    front = subprocess.Popen(
        [str(BIN / "orion"), "frontend", "-p", str(front_port)],
        env=env,
        stdout=logs["frontend"],
        stderr=subprocess.STDOUT,
    )
    driver = None
    try:
        listed = json.loads(_wait_http(f"http://127.0.0.1:{api_port}/experiments", serve))
        assert {"name": NAME, "version": 1} in listed
        lpi = json.loads(_wait_http(f"http://127.0.0.1:{api_port}/plots/lpi/{NAME}", serve))
        assert '<div id="root">' in _wait_http(f"http://{front_origin}/", front).decode(), (
            "orion frontend does not serve the dashboard (falcon >= 4? see pyproject.toml)"
        )

        with Proxy(
            {DASHBOARD_API: ("127.0.0.1", api_port), front_origin: ("localhost", front_port)}
        ) as proxy:
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for arg in (
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--window-size=1400,1180",
                "--disable-background-networking",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--proxy-server=http://127.0.0.1:{proxy.port}",
                "--proxy-bypass-list=<-loopback>",
            ):  # loopback through the proxy too
                options.add_argument(arg)
            driver = webdriver.Chrome(service=Service(chromedriver), options=options)
            wait = WebDriverWait(driver, 60)
            driver.get(f"http://{front_origin}/")

            # the experiment list comes from `orion serve` on Redis
            entry = wait.until(lambda d: d.find_element(By.XPATH, f"//*[text()='{NAME}']"))
            entry.click()

            # trials page: every stored trial, its parameters and objective
            driver.execute_script("window.location.hash = '#/database'")
            wait.until(
                lambda d: (
                    f"{len(trials)} trial(s) for experiment"
                    in d.find_element(By.TAG_NAME, "body").text
                )
            )
            (page_size,) = [
                Select(e)
                for e in driver.find_elements(By.TAG_NAME, "select")
                if "20" in [o.text for o in Select(e).options]
            ]
            page_size.select_by_visible_text("20")  # "items per page": all trials at once
            rows = wait.until(
                lambda d: (
                    [r.text for r in d.find_elements(By.CSS_SELECTOR, "tbody tr")]
                    if len(d.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(trials)
                    else None
                )
            )
            trials_png = tmp_path / "dashboard-trials.png"
            driver.save_screenshot(str(trials_png))
            for trial in trials:
                (row,) = [r for r in rows if r.startswith(trial.id[:7])]
                params = {name.lstrip("/"): value for name, value in trial.params.items()}
                assert _num(params["x"]) in row and _num(params["y"]) in row, (row, params)
                if trial.status == "completed":
                    assert repr(trial.objective.value) in row, (row, trial.objective)

            # visualizations page: the plots `orion serve` computed from the stored trials
            driver.execute_script("window.location.hash = '#/visualizations'")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 3)
            plots = wait.until(
                lambda d: d.execute_script(
                    "const p = [...document.querySelectorAll('.js-plotly-plot')];"
                    "return p.every(g => g.data && g.layout) ? p.map(g => ({"
                    "title: g.layout.title && g.layout.title.text, data: g.data,"
                    "drawn: g.querySelectorAll('g.point, g.trace path, .lines path').length}))"
                    " : null;"
                )
            )
            driver.save_screenshot(str(tmp_path / "dashboard-plots.png"))
            by_title = {p["title"]: p for p in plots}
            regret = by_title[f"Regret for experiment '{NAME}'"]
            plotted_ids = {
                row[0] for trace in regret["data"] for row in trace.get("customdata") or []
            }
            assert plotted_ids == {t.id for t in completed}
            lpi_plot = by_title[f"LPI for experiment '{NAME}'"]
            assert lpi_plot["data"][0]["x"] == lpi["data"][0]["x"] == ["/x", "/y"]
            # LPI fits a random forest per request (no fixed seed): close, not equal
            assert lpi_plot["data"][0]["y"] == pytest.approx(
                lpi["data"][0]["y"], rel=0.05, abs=0.02
            )
            assert lpi_plot["drawn"] >= 2, "the LPI bars are drawn"
            assert f"Parallel Coordinates Plot for experiment '{NAME}'" in by_title
        api_calls = {
            path for host, path, status in proxy.requests if host == DASHBOARD_API and status == 200
        }
        assert {
            "/experiments",
            f"/trials/{NAME}",
            f"/plots/regret/{NAME}",
            f"/plots/lpi/{NAME}",
        } <= api_calls, api_calls
        target = os.environ.get("ORION_REDIS_DASHBOARD_SCREENSHOT")
        if target:
            shutil.copyfile(trials_png, target)
    finally:
        if driver is not None:
            driver.quit()
        for proc in (serve, front):
            proc.terminate()
        for proc in (serve, front):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()
