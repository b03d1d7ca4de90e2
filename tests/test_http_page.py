"""The page at / in a real browser: Debian's Chromium, headless, driven by chromedriver.

The page asks for the token once, lists the studies, shows one study's report and
volumes, and shows the answer to a question while it streams.
"""

from __future__ import annotations

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from support.nodes import API_TOKEN
from support.qa_support import ApiServer, SlowAnswerer, findings_dict, insert_study

# Debian's chromium and chromium-driver, which `make test` installs (system-deps):
# without them this test fails; it is never skipped.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, timeout=20.0, what="condition"):
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(
        lambda d: predicate(d), message=f"timed out waiting for {what}")


def test_page_loads_asks_and_shows_the_answer_as_it_streams(tmp_path, browser):
    findings = findings_dict("bleed")
    with ApiServer(tmp_path / "data", answerer=SlowAnswerer(0.02)) as api:
        uid = insert_study(api.index, findings)
        browser.get(f"{api.url}/")
        assert browser.title == "trauma-node"
        # The page asks for the token once.
        token_input = _wait(browser, lambda d: d.find_element(By.ID, "token-input").is_displayed()
                            and d.find_element(By.ID, "token-input"), what="token form")
        token_input.send_keys(API_TOKEN)
        browser.find_element(By.ID, "token-submit").click()
        row = _wait(browser, lambda d: d.find_elements(
            By.CSS_SELECTOR, f'#studies tr[data-study-uid="{uid}"]'), what="the study list")[0]
        assert "done" in row.text and "high" in row.text
        row.click()
        _wait(browser, lambda d: "RESEARCH USE ONLY" in d.find_element(By.ID, "report").text,
              what="the report")
        volumes = browser.find_element(By.ID, "volumes").text
        assert f"{findings['volumes_ml']['hemorrhage']:.1f} mL" in volumes
        assert "≥ 4" in browser.find_element(By.ID, "organs").text

        browser.find_element(By.ID, "question").send_keys("Is the spleen injured?")
        browser.find_element(By.ID, "ask").click()
        answer = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.answer"),
                       what="the answer box")[-1]
        # Seen while it streams: part of the text is there before the stream has ended.
        partial = _wait(browser, lambda d: "streaming" in answer.get_attribute("class")
                        and answer.find_element(By.CLASS_NAME, "text").text, what="partial text")
        assert partial and not partial.endswith("confirm on the images.")
        _wait(browser, lambda d: answer.get_attribute("data-state") == "complete",
              what="the end of the answer")
        text = answer.find_element(By.CLASS_NAME, "text").text
        assert text.startswith("Spleen:") and "AAST grade at least IV" in text
        assert int(answer.get_attribute("data-chunks")) > 10
        message_id = answer.get_attribute("data-message-id")

        # Reloaded: no token asked again, and the stored conversation is shown.
        browser.refresh()
        row = _wait(browser, lambda d: d.find_elements(
            By.CSS_SELECTOR, f'#studies tr[data-study-uid="{uid}"]'), what="the study list")[0]
        assert not browser.find_element(By.ID, "login").is_displayed()
        row.click()
        stored = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.answer"),
                       what="the stored conversation")
        assert f"Answer {message_id}" in stored[0].text and "AAST grade at least IV" in stored[0].text
