"""The demo page in a real headless browser: Debian's chromium through chromium-driver (Selenium).

Loads the page, uploads an image through the page's file input, types a question, sends it, and
waits for the answer and the drawn box to appear. Its screenshot is the README's
(docs/demo.png: copy it from the path this test prints). scripts/test.sh installs chromium and
chromium-driver when missing; outside CI the test is skipped without them, in CI it fails.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (dev extra)")


def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromedriver missing in CI: scripts/test.sh installs them with apt-get")
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    # The driver's own path: Selenium Manager (which would download one) never runs.
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_upload_ask_and_see_the_answer_and_its_box(demo_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(demo_server.url)
        wait = WebDriverWait(driver, 60)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#uploads input[type=file]")))
        upload.send_keys(str(demo_server.heldout.parent / "img" / "0.png"))
        wait.until(lambda d: ".png" in d.find_element(By.ID, "uploads").text)  # the upload is listed
        driver.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("Where is the blue circle?")
        driver.find_element(By.ID, "send").click()
        # The run's answer (its box as text) in the first column, then the drawn image under it.
        wait.until(lambda d: re.search(r"\[\d+, \d+, \d+, \d+\]", d.find_element(By.ID, "chat0").text))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#boxes0 img"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "box(es)"))
        assert "Where is the blue circle?" in driver.find_element(By.ID, "chat1").text  # compare column
        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
