"""The review page in a real headless browser: Chromium from the distribution's packages
(Debian: apt-get install chromium chromium-driver), driven by Selenium through the system's
chromedriver. The test opens a discover output, enrolls a cluster under a name by clicking,
and checks that the page's gallery and the gallery itself have the profile. Skipped, saying
why, where no browser is installed (unless OFA_SDK_REQUIRE_BROWSER is set: then it fails)."""
import json
import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("sklearn", reason="the test writes a discover output (scikit-learn)")
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium is not installed (it is in the test extra)")

from conftest import enrolled_gallery, make_images  # noqa: E402
from serve_support import discover_output  # noqa: E402

TOKEN = "browser-token"


def _binaries():
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        if os.environ.get("OFA_SDK_REQUIRE_BROWSER"):     # CI sets it: a missing browser fails
            pytest.fail("OFA_SDK_REQUIRE_BROWSER is set but Chromium or chromedriver is missing "
                        "(apt-get install chromium chromium-driver)")
        pytest.skip("no headless browser installed: the review page's browser test needs Chromium "
                    "and its driver (Debian: apt-get install chromium chromium-driver); CI "
                    "installs them")
    return browser, driver


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service
    binary, driver = _binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1200,1600"):
        opts.add_argument(a)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    b.set_page_load_timeout(60)
    yield b
    b.quit()


def test_review_page_enrolls_a_cluster_by_clicking(browser, tiny_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from ofa_sdk import Attributor
    from ofa_sdk.serve import Running
    from ofa_sdk.serve.app import Settings
    g = enrolled_gallery(tmp_path, tiny_model, [("gen-a", "noise", 4)])
    root = tmp_path / "review"
    att = Attributor(model=tiny_model, backend="torch", gallery=g)
    discover_output(root / "found", [make_images(tmp_path / "u0", 5, 60, kind="blocky"),
                                     make_images(tmp_path / "u1", 4, 61, kind="noise")], att)
    with Running(att, Settings(token=TOKEN, review_roots=[str(root)])) as srv:
        wait = WebDriverWait(browser, 60)
        browser.get(srv.url + "/review")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#folder option")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, '#gallery [data-name="gen-a"]')))
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "load").click()
        card = wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, '.cluster[data-cluster="0"]')))
        c = json.loads((root / "found" / "summary.json").read_text())["cluster_list"][0]
        for shown in (f"size {c['size']}", f"cohesion {c['cohesion']:.2f}",
                      f"nearest gen-a (score {c['nearest_score']:.2f}"):
            assert shown in card.text, (shown, card.text)
        sheet = card.find_element(By.CSS_SELECTOR, "img.contact")
        wait.until(lambda b: b.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", sheet))
        card.find_element(By.CSS_SELECTOR, "input.name").send_keys("found-gen")
        card.find_element(By.CSS_SELECTOR, "button.enroll").click()
        wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, '#gallery [data-name="found-gen"]')))
        wait.until(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, '.cluster[data-cluster="0"] .decision'), "enrolled as found-gen"))
        # dismiss the other one
        browser.find_element(By.CSS_SELECTOR, '.cluster[data-cluster="1"] button.dismiss').click()
        wait.until(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, '.cluster[data-cluster="1"] .decision'), "dismissed"))
    assert "found-gen" in att.gallery
    prof = att.gallery.get("found-gen")
    assert prof.metadata["origin"] == "discovery" and prof.metadata["used"] == 5
    rec = json.loads((root / "found" / "cluster-0" / "decision.json").read_text())
    assert rec["action"] == "enroll" and rec["profile"] == "found-gen"
    assert json.loads((root / "found" / "cluster-1" / "decision.json").read_text())["action"] == "dismiss"
