"""The page to hum into, in a real browser: Debian's Chromium driven by Selenium through chromedriver,
with a fake microphone that plays a hum of a catalogue track (`--use-file-for-fake-audio-capture`).

`scripts/test.sh` installs chromium and chromium-driver (scripts/setup.sh --with-browser); elsewhere
these tests skip, saying so. The result page's screenshot is saved as a test artefact
(`artifacts/page-test/`), and the time from pressing stop to the answer on the page is printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_gen import constants as C
from serving.apps.bench_page import browser_paths, chromium, fake_microphone_file, timer_seconds
from tests.serving.conftest import TRACK_IDS, loader_for

CHROMIUM, CHROMEDRIVER = browser_paths()
ARTEFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "page-test"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh --with-browser installs them)",
)


@pytest.fixture(scope="module")
def page_server(server_factory, embedder, index_dir, catalogue_manifest):
    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0,
                               catalogue=catalogue_manifest)
    return server


@pytest.fixture(scope="module")
def hum_file(masters, tmp_path_factory) -> Path:
    """A hum of the second catalogue track (10 s from 4 s) at 48 kHz, as a microphone would give."""
    audio = masters[TRACK_IDS[1]][4 * C.SAMPLE_RATE : 14 * C.SAMPLE_RATE]
    return fake_microphone_file(audio, C.SAMPLE_RATE, tmp_path_factory.mktemp("mic") / "hum.wav")


def _browser(fake_audio: Path | None = None, microphone_allowed: bool = True, window: str = "1280,900"):
    return chromium(fake_audio, microphone_allowed, window)


def _open(driver, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"http://127.0.0.1:{server.http_port}/")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "record").is_enabled())


def _verdict(driver, timeout: float = 60.0) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "verdict").get_attribute("data-verdict") not in (None, "", "pending"))
    return driver.find_element(By.ID, "verdict").get_attribute("data-verdict")


def _console_errors(driver) -> list[str]:
    try:
        return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - not every driver keeps the console log
        return []


def test_record_a_hum_and_see_the_song_and_why(page_server, hum_file):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(hum_file)
    try:
        _open(driver, page_server)
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, 20).until(
            lambda d: timer_seconds(d) >= 10)
        driver.find_element(By.ID, "record").click()  # stop: the recording is sent
        assert _verdict(driver) == "match"
        matches = driver.find_elements(By.CSS_SELECTOR, "#results li.match")
        assert matches and matches[0].get_attribute("data-track-id") == TRACK_IDS[1]
        assert f"Title {TRACK_IDS[1]}" in matches[0].text
        canvas = driver.find_element(By.ID, "contour")
        WebDriverWait(driver, 10).until(lambda d: canvas.get_attribute("data-drawn") == "true")
        assert int(canvas.get_attribute("data-points")) > 100
        answer_ms = float(driver.execute_script("return document.body.dataset.answerMs"))
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTEFACTS / "result.png"))
        (ARTEFACTS / "timing.json").write_text(json.dumps({"stop_to_answer_ms": answer_ms}))
        print(f"\npage: {answer_ms:.0f} ms from pressing stop to the answer on the page "
              f"(screenshot {ARTEFACTS / 'result.png'})")
        assert not _console_errors(driver)
    finally:
        driver.quit()


def test_live_mode_guesses_while_humming(page_server, hum_file):
    """Live: PCM over WS /v1/stream while recording, a guess on the page before Stop, then the final
    answer (after Stop, or earlier once the server is sure) with the why-it-matched plot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def log(d) -> list[str]:
        return d.execute_script("return window.Earworm.state().liveLog")

    driver = _browser(hum_file)
    try:
        _open(driver, page_server)
        driver.find_element(By.ID, "live").click()
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, 30).until(lambda d: log(d))
        assert log(driver)[0] == "interim"
        if driver.execute_script("return window.Earworm.state().recording"):
            WebDriverWait(driver, 20).until(lambda d: timer_seconds(d) >= 8
                                            or not d.execute_script("return window.Earworm.state().recording"))
            if driver.execute_script("return window.Earworm.state().recording"):
                driver.find_element(By.ID, "record").click()  # stop: the final answer comes over the stream
        WebDriverWait(driver, 60).until(lambda d: log(d)[-1] in ("final", "early"))
        assert _verdict(driver) == "match"
        assert driver.execute_script("return document.body.dataset.live") in ("final", "early")
        matches = driver.find_elements(By.CSS_SELECTOR, "#results li.match")
        assert matches and matches[0].get_attribute("data-track-id") == TRACK_IDS[1]
        canvas = driver.find_element(By.ID, "contour")
        WebDriverWait(driver, 10).until(lambda d: canvas.get_attribute("data-drawn") == "true")
        answer_ms = float(driver.execute_script("return document.body.dataset.answerMs"))
        print(f"\npage, live: answers {log(driver)}; {answer_ms:.0f} ms from pressing stop to the final answer "
              "(0: the server was sure before Stop)")
        assert not driver.execute_script("return window.Earworm.state().live")
        assert not _console_errors(driver)
    finally:
        driver.quit()


def test_live_mode_final_answer_after_stop(server_factory, embedder, index_dir, catalogue_manifest, hum_file):
    """A server that is never sure early: guesses while humming, then Stop ends the stream and the
    final answer comes over it (not a second upload)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0,
                               catalogue=catalogue_manifest, servicer={"confident_margin": float("inf")})
    driver = _browser(hum_file)
    try:
        _open(driver, server)
        driver.find_element(By.ID, "live").click()
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, 30).until(lambda d: len(d.execute_script("return window.Earworm.state().liveLog")) >= 3)
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.live") == "final")
        log = driver.execute_script("return window.Earworm.state().liveLog")
        assert log[-1] == "final" and set(log[:-1]) == {"interim"}
        assert _verdict(driver) == "match"
        assert driver.find_elements(By.CSS_SELECTOR, "#results li.match")[0].get_attribute("data-track-id") == \
            TRACK_IDS[1]
        assert "(live)" in driver.find_element(By.ID, "answer-time").text
    finally:
        driver.quit()


def test_live_mode_explains_a_missing_token(server_factory, embedder, index_dir, hum_file):
    from selenium.webdriver.common.by import By

    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0,
                               auth_token="s3cret")
    driver = _browser(hum_file)
    try:
        _open(driver, server)
        driver.find_element(By.ID, "live").click()
        driver.find_element(By.ID, "record").click()
        assert _verdict(driver, 30) == "error"
        assert "token" in driver.find_element(By.ID, "status").text.lower()
        assert driver.find_element(By.ID, "token").is_displayed()
        assert not driver.execute_script("return window.Earworm.state().recording")
    finally:
        driver.quit()


def test_upload_a_file(page_server, hum_file):
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        _open(driver, page_server)
        driver.find_element(By.ID, "file").send_keys(str(hum_file))
        assert _verdict(driver) == "match"
        assert driver.find_elements(By.CSS_SELECTOR, "#results li.match")[0].get_attribute("data-track-id") == \
            TRACK_IDS[1]
    finally:
        driver.quit()


def test_a_denied_microphone_is_explained(page_server):
    from selenium.webdriver.common.by import By

    driver = _browser(microphone_allowed=False)
    try:
        _open(driver, page_server)
        driver.find_element(By.ID, "record").click()
        assert _verdict(driver, 20) == "error"
        assert "denied" in driver.find_element(By.ID, "status").text.lower()
    finally:
        driver.quit()


def test_server_errors_are_shown(server_factory, embedder, index_dir, tmp_path):
    """A file the server cannot read (400, the server's message), then a server that went away."""
    from selenium.webdriver.common.by import By

    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0)
    junk = tmp_path / "notes.wav"
    junk.write_bytes(b"these are my notes, not a recording" * 50)
    driver = _browser()
    try:
        _open(driver, server)
        driver.find_element(By.ID, "file").send_keys(str(junk))
        assert _verdict(driver) == "error"
        assert "could not be decoded" in driver.find_element(By.ID, "status").text
        server.http.stop()
        driver.execute_script("document.getElementById('verdict').dataset.verdict = 'pending'")
        driver.find_element(By.ID, "file").send_keys(str(junk))
        assert _verdict(driver) == "error"
        assert "reach" in driver.find_element(By.ID, "status").text.lower()
    finally:
        driver.quit()


def test_phone_sized_and_keyboard_only(page_server, hum_file):
    """On a phone-sized screen nothing scrolls sideways; Tab reaches Record and Space starts and stops it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(hum_file)
    try:  # a phone's screen (headless Chromium's window cannot be narrower than 500 px)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        _open(driver, page_server)
        assert driver.execute_script("return window.innerWidth") == 390
        overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        assert driver.execute_script(overflow) <= 0
        for _ in range(10):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            if driver.switch_to.active_element.get_attribute("id") == "record":
                break
        assert driver.switch_to.active_element.get_attribute("id") == "record"
        driver.switch_to.active_element.send_keys(Keys.SPACE)
        WebDriverWait(driver, 20).until(lambda d: timer_seconds(d) >= 8)
        assert driver.switch_to.active_element.get_attribute("id") == "record"  # the focus stays
        driver.switch_to.active_element.send_keys(Keys.SPACE)
        assert _verdict(driver) == "match"
        assert 7.5 < float(driver.find_element(By.ID, "timer").text.split()[0]) < 12  # stopped by Space
        assert driver.find_elements(By.CSS_SELECTOR, "#results li.match")[0].get_attribute("data-track-id") == \
            TRACK_IDS[1]
        assert driver.execute_script(overflow) <= 0
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTEFACTS / "phone.png"))
    finally:
        driver.quit()
