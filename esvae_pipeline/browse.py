"""The results as a researcher sees them: the MLflow UI and the Snakemake report in a real browser.

:func:`serve_mlflow` starts ``mlflow ui`` on a loopback port (stopped by process group when done);
:func:`render` loads a page in headless Chromium (Debian's ``chromium``, or ``$ESVAE_CHROMIUM``;
a fresh profile each time, so nothing a previous visit stored changes what a page shows) and
returns the DOM after its scripts ran, optionally with a screenshot. :func:`view_urls` gives the
addresses of the views that answer the paper's questions (:data:`esvae_pipeline.tracking.VIEWS`).

``python -m esvae_pipeline browse --store sqlite:///results/smoke/mlflow.db --experiment NAME``
prints those addresses; with ``--screenshots DIR`` it also saves a screenshot of each (the pictures
in ``docs/`` are made this way, by the code the workflow lane's browser test runs).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from esvae.errors import ConfigError

from .tracking import VIEWS

# MLflow 3 keeps a browser-wide "GenAI / Model training" switch (default GenAI, whose experiment page
# opens on traces); this URL parameter selects model training, whose experiment page is the runs table.
ML_WORKFLOW = "workflowType=machine_learning"
WINDOW = (1600, 1000)


def chromium() -> str:
    """The headless browser: ``$ESVAE_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH."""
    for name in (os.environ.get("ESVAE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return str(shutil.which(name))
    raise ConfigError(
        "no Chromium found: install Debian's package ('apt-get install chromium', which scripts/setup.sh does "
        "when run as root) or set ESVAE_CHROMIUM to the browser's path"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_mlflow(store_uri: str, timeout: float = 120.0) -> Iterator[str]:
    """``mlflow ui`` on the store, on a free loopback port; yields its base URL and stops it after."""
    if store_uri.startswith("sqlite:///") and not Path(store_uri[len("sqlite:///") :]).is_file():
        raise ConfigError(f"no MLflow store at {store_uri[len('sqlite:///') :]} (a pipeline run creates it)")
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", store_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise ConfigError(f"mlflow ui exited with status {proc.returncode} on {store_uri}")
            if time.monotonic() > deadline:
                raise ConfigError(f"mlflow ui did not answer on {base} within {timeout:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def render(url: str, screenshot: Optional[Path] = None, budget_ms: int = 20000) -> str:
    """The page's DOM once its scripts have run (``budget_ms`` of virtual time), and a screenshot if asked."""
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="esvae-chromium-") as profile:
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
        common += [f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        common += [f"--window-size={WINDOW[0]},{WINDOW[1]}"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        if dom.returncode != 0:
            raise ConfigError(f"chromium could not render {url}: {dom.stderr.strip()[-300:]}")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
            if shot.returncode != 0 or not screenshot.is_file():
                raise ConfigError(f"chromium could not take a screenshot of {url}")
    return dom.stdout


def text_of(dom: str) -> str:
    """The visible text of a DOM dump, one ' | ' between elements (scripts and styles dropped)."""
    body = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    body = re.sub(r"<[^>]+>", " | ", body)
    return re.sub(r"(\s*\|\s*)+", " | ", html.unescape(body)).strip(" |")


def experiment_id(base: str, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as r:
            return json.load(r)["experiment"]["experiment_id"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ConfigError(f"the MLflow store has no experiment {name!r}") from None
        raise


def runs_url(base: str, experiment: str, search: str = "", order: str = "") -> str:
    """The experiment's runs table, in model-training mode, filtered by ``search`` (an MLflow search)
    and sorted by ``order`` (ascending)."""
    params = ML_WORKFLOW + (f"&searchFilter={urllib.parse.quote(search)}" if search else "")
    params += f"&orderByKey={urllib.parse.quote(order)}&orderByAsc=true" if order else ""
    return f"{base}/#/experiments/{experiment}/runs?{params}"


def compare_url(base: str, experiment: str, run_ids: List[str], metric: str) -> str:
    """The chart of ``metric`` over epochs for several runs side by side (MLflow's metric page)."""

    def q(value) -> str:
        return urllib.parse.quote(json.dumps(value, separators=(",", ":")))

    query = f"runs={q(run_ids)}&metric={q(metric)}&experiments={q([experiment])}&plot_metric_keys={q([metric])}"
    return f"{base}/#/metric?{query}&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=false"


def view_urls(base: str, experiment: str) -> List[Tuple[str, str, str, Tuple[str, ...]]]:
    """``(slug, title, url, columns)`` of each of :data:`~esvae_pipeline.tracking.VIEWS`."""
    out: List[Tuple[str, str, str, Tuple[str, ...]]] = []
    for title, search, order, columns in VIEWS:
        slug = re.sub(r"[^a-z0-9]+", "_", title.split(":")[0].lower()).strip("_")
        out.append((slug, title, runs_url(base, experiment, search, order), columns))
    return out
