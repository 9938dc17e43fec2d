"""`earworm bench-page`: the page to hum into, timed in a real browser.

Debian's Chromium (headless, driven by Selenium through chromedriver) opens the page with a fake
microphone that plays a hum (`--use-file-for-fake-audio-capture`), presses Record, hums for
`--seconds`, presses Stop and waits for the answer. Each run prints the time from pressing Stop to
the answer on the page (the page's own `performance.now()` clock: upload, server, rendering and
the why-it-matched plot), the song shown first and whether it is the hummed one; the summary gives
the median and the worst. `--live` streams while humming (WS /v1/stream) instead: then the figure
is Stop to the final answer, 0 when the server was sure before Stop.

Without `--url` it serves the demo catalogue and index (`earworm demo` builds them, and this does
too when they are missing) with the default model in this process, and hums the demo's synthetic
hums of catalogue tracks. With `--url` it measures a page already running; give `--hum FILE` (and
`--expect TRACK_ID` to check the answer). `--screenshot PATH` keeps the last result page.

`scripts/setup.sh --with-browser` installs chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FAKE_MIC_RATE = 48_000
"""The fake microphone's file is written at a rate a real microphone has."""


def browser_paths() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) on PATH, or None for each that is missing."""
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def chromium(fake_audio: Path | None = None, microphone_allowed: bool = True, window: str = "1280,900"):
    """A headless Chromium WebDriver with a fake microphone (playing `fake_audio` in a loop when given).

    `microphone_allowed=False`: the person says no to the microphone prompt."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_paths()
    if binary is None or driver_path is None:
        raise FileNotFoundError("needs Debian's chromium and chromium-driver (scripts/setup.sh --with-browser)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={window}", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-device-for-media-stream"):
        options.add_argument(flag)
    if microphone_allowed:
        options.add_argument("--use-fake-ui-for-media-stream")
    else:
        options.add_experimental_option("prefs", {"profile.default_content_setting_values.media_stream_mic": 2})
    if fake_audio is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_audio}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver


def fake_microphone_file(audio: np.ndarray, rate: int, out: Path) -> Path:
    """`audio` as the WAV the fake microphone plays (at FAKE_MIC_RATE)."""
    import soxr

    from data_gen.audio import write_audio

    write_audio(out, soxr.resample(audio, rate, FAKE_MIC_RATE).astype(np.float32), FAKE_MIC_RATE)
    return out


@dataclass
class PageRun:
    hum: str
    expected: str | None
    verdict: str
    top_track: str | None
    correct: bool | None
    stop_to_answer_ms: float
    live_answers: list[str]


def timer_seconds(driver) -> float:
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "timer").text or "0"
    try:
        return float(text.split()[0])
    except ValueError:
        return 0.0


def record_once(driver, url: str, seconds: float, live: bool, timeout_s: float = 90.0) -> tuple[str, str | None, float,
                                                                                               list[str]]:
    """Open the page, record `seconds` of the fake microphone, Stop; (verdict, first track id,
    stop-to-answer ms, live answers)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "record").is_enabled())
    if live != driver.find_element(By.ID, "live").is_selected():
        driver.find_element(By.ID, "live").click()
    driver.find_element(By.ID, "record").click()

    def recording(d) -> bool:
        return bool(d.execute_script("return window.Earworm.state().recording"))

    WebDriverWait(driver, 30).until(recording)  # the microphone is open
    WebDriverWait(driver, seconds + 30).until(lambda d: timer_seconds(d) >= seconds or not recording(d))
    if recording(driver):
        driver.find_element(By.ID, "record").click()
    WebDriverWait(driver, timeout_s).until(
        lambda d: (d.find_element(By.ID, "verdict").get_attribute("data-verdict") or "pending") != "pending"
        and d.execute_script("return document.body.dataset.live || ''") != "interim")
    verdict = driver.find_element(By.ID, "verdict").get_attribute("data-verdict")
    first = driver.find_elements(By.CSS_SELECTOR, "#results li.match")
    top = first[0].get_attribute("data-track-id") if first else None
    if verdict == "match":
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "contour").get_attribute("data-drawn") == "true")
    ms = float(driver.execute_script("return document.body.dataset.answerMs || 'nan'"))
    return verdict, top, ms, list(driver.execute_script("return window.Earworm.state().liveLog"))


def bench(url: str, hums: list[tuple[Path, str | None]], seconds: float, live: bool,
          screenshot: Path | None) -> list[PageRun]:
    runs = []
    for i, (hum, expected) in enumerate(hums):
        driver = chromium(hum)  # a new browser each run: the fake microphone starts at the hum's start
        try:
            verdict, top, ms, answers = record_once(driver, url, seconds, live)
            if screenshot is not None and i == len(hums) - 1:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
        run = PageRun(hum=str(hum), expected=expected, verdict=verdict, top_track=top,
                      correct=None if expected is None else top == expected, stop_to_answer_ms=ms,
                      live_answers=answers)
        runs.append(run)
        print(f"run {i + 1}/{len(hums)}: {ms:7.0f} ms stop->answer, {verdict}, first {top}"
              + ("" if expected is None else f" ({'right' if run.correct else 'WRONG'}, hummed {expected})")
              + (f", live answers {answers}" if live else ""), flush=True)
    return runs


def demo_hums(workdir: Path, runs: int, seconds: float, out: Path) -> tuple[list[tuple[Path, str | None]], object]:
    """Serve the demo (building what is missing) and pick `runs` of its synthetic hums of catalogue
    tracks, as fake-microphone files. Returns (hums, server)."""
    from dataclasses import replace

    from data_gen import constants as C
    from data_gen.audio import load_audio
    from data_gen.manifest import read_queries
    from serving.apps.demo import DemoConfig, DemoPaths, ensure_catalogue, ensure_index, ensure_queries, resolve_model
    from serving.embedder import ModelMetadata
    from serving.server import ServerConfig, create_server

    config = replace(DemoConfig(), workdir=workdir)
    paths = DemoPaths(workdir.resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(paths)
    manifest = ensure_catalogue(paths, config)
    index_dir, _ = ensure_index(paths, manifest, model_dir, ModelMetadata.read(model_dir).version)
    queries = [q for q in read_queries(ensure_queries(paths.queries, manifest, config, config.demo_queries,
                                                      config.seed)) if q.extra.get("kind") == "hum"]
    queries = queries or list(read_queries(paths.queries / "queries.csv"))
    hums = []
    for i in range(runs):
        q = queries[i % len(queries)]
        audio = load_audio(q.path)[: int(seconds * C.SAMPLE_RATE)]
        # silence after the hum (and up to `seconds`): the fake microphone loops its file
        audio = np.pad(audio, (0, int((seconds + 5) * C.SAMPLE_RATE) - audio.shape[0]))
        hums.append((fake_microphone_file(audio, C.SAMPLE_RATE, out / f"hum-{i}.wav"), q.track_id))
    server, _ = create_server(replace(ServerConfig(), model_dir=model_dir, index_dir=index_dir, host="127.0.0.1",
                                      port=0, http_port=0, catalogue=manifest))
    return hums, server


def run_bench_page(args: argparse.Namespace) -> int:
    binary, driver_path = browser_paths()
    if binary is None or driver_path is None:
        print("earworm bench-page: needs Debian's chromium and chromium-driver (scripts/setup.sh --with-browser)")
        return 2
    server = None
    with tempfile.TemporaryDirectory(prefix="earworm-bench-page-") as tmp:
        if args.url:
            if not args.hum:
                print("earworm bench-page: --url needs --hum FILE")
                return 2
            from data_gen import constants as C
            from data_gen.audio import load_audio

            mic = fake_microphone_file(load_audio(args.hum), C.SAMPLE_RATE, Path(tmp) / "hum.wav")
            hums, url = [(mic, args.expect)] * args.runs, args.url
        else:
            from data_gen.paths import artifacts_dir

            hums, server = demo_hums(args.workdir or artifacts_dir() / "demo", args.runs, args.seconds, Path(tmp))
            url = f"http://127.0.0.1:{server.http_port}/"
        try:
            print(f"page {url}: {len(hums)} runs, {args.seconds:g} s hums" + (", live" if args.live else ""),
                  flush=True)
            started = time.perf_counter()
            runs = bench(url, hums, args.seconds, args.live, args.screenshot)
        finally:
            if server is not None:
                server.stop(grace=1.0)
    times = [r.stop_to_answer_ms for r in runs if np.isfinite(r.stop_to_answer_ms)]
    right = [r.correct for r in runs if r.correct is not None]
    summary = {
        "runs": len(runs), "seconds": args.seconds, "live": args.live,
        "stop_to_answer_ms": {"p50": statistics.median(times) if times else None, "max": max(times, default=None),
                              "min": min(times, default=None)},
        "right_first": f"{sum(right)}/{len(right)}" if right else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(f"stop -> answer on the page: median {summary['stop_to_answer_ms']['p50']:.0f} ms, "
          f"max {summary['stop_to_answer_ms']['max']:.0f} ms over {len(times)} runs"
          + (f"; the hummed song first in {summary['right_first']}" if right else "")
          + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    if args.json_out:
        args.json_out.write_text(json.dumps({"summary": summary, "runs": [asdict(r) for r in runs]}, indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    from serving.arg_types import positive_int

    p = subparsers.add_parser("bench-page", help="time the page to hum into in headless Chromium (stop -> answer)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running page (default: serve the demo in this process)")
    p.add_argument("--hum", type=Path, default=None, help="with --url: the recording the fake microphone plays")
    p.add_argument("--expect", default=None, help="with --url: the track id the hum is of")
    p.add_argument("--workdir", type=Path, default=None, help="the demo's work dir (default artifacts/demo)")
    p.add_argument("--runs", type=positive_int, default=5, help="default 5 (each a different demo hum)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds to hum before Stop (default 10)")
    p.add_argument("--live", action="store_true", help="live mode: stream while humming (WS /v1/stream)")
    p.add_argument("--screenshot", type=Path, default=None, help="save the last result page here (PNG)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(func=run_bench_page)
