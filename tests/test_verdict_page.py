"""The radiologist's verdict on the page, in a real browser (Debian's Chromium, headless, as
tests/test_http_page.py): a reader signs in with their own token, marks one finding accepted
and one corrected, sees them after a reload, and the agreement page shows the figures."""

from __future__ import annotations

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from support.nodes import AUTH
from support.qa_support import findings_dict, insert_study
from support.verdict_support import AuditedApi
from test_http_page import browser  # noqa: F401 - the browser fixture

from node.store import readers
from node.store import verdicts as store


def _wait(driver, predicate, timeout=20.0, what="condition"):
    """As test_http_page's, and a row replaced while it is read (the table is drawn again
    after each verdict) is read again."""
    return WebDriverWait(driver, timeout, poll_frequency=0.02,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: predicate(d), message=f"timed out waiting for {what}")


def _row(driver, key):
    rows = driver.find_elements(By.CSS_SELECTOR, f'#verdicts tr[data-finding="{key}"]')
    return rows[0] if rows else None


def _open_study(driver, uid):
    row = _wait(driver, lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#studies tr[data-study-uid="{uid}"]'), what="the study list")[0]
    row.click()
    return _wait(driver, lambda d: _row(d, "organ/spleen"), what="the findings to judge")


def test_a_reader_judges_findings_and_sees_the_agreement(tmp_path, browser):  # noqa: F811
    findings = findings_dict("bleed")
    ai_blood = findings["volumes_ml"]["hemorrhage"]
    with AuditedApi(tmp_path / "data") as api:
        uid = insert_study(api.index, findings)
        _, token = readers.add(api.index, "alice", "Dr Alice Example")
        browser.get(f"{api.url}/")
        token_input = _wait(browser, lambda d: d.find_element(By.ID, "token-input").is_displayed()
                            and d.find_element(By.ID, "token-input"), what="sign-in form")
        token_input.send_keys(token)
        browser.find_element(By.ID, "token-submit").click()
        _wait(browser, lambda d: "Signed in as Dr Alice Example (alice, reader)"
              in d.find_element(By.ID, "signed-in").text, what="who is signed in")

        spleen = _open_study(browser, uid)
        assert "injured, AAST grade ≥ 4" in spleen.text
        spleen.find_element(By.CLASS_NAME, "verdict-accepted").click()
        _wait(browser, lambda d: "accepted by Dr Alice Example (alice) at" in _row(
            d, "organ/spleen").find_element(By.CLASS_NAME, "verdict-shown").text,
              what="the spleen verdict")

        blood = _row(browser, "hemorrhage")
        assert f"{ai_blood:.1f} mL" in blood.text
        blood.find_element(By.CLASS_NAME, "corrected-volume").send_keys("61.5")
        blood.find_element(By.CLASS_NAME, "verdict-note").send_keys("bowel content counted")
        blood.find_element(By.CLASS_NAME, "verdict-corrected").click()
        _wait(browser, lambda d: "corrected to 61.5 mL by Dr Alice Example (alice)" in _row(
            d, "hemorrhage").find_element(By.CLASS_NAME, "verdict-shown").text,
              what="the corrected volume")

        # stored with who and when, as the page said
        stored = {v["finding_key"]: v for v in store.for_study(api.index, uid)}
        assert set(stored) == {"organ/spleen", "hemorrhage"}
        assert stored["hemorrhage"]["corrected_volume_ml"] == 61.5
        assert stored["hemorrhage"]["note"] == "bowel content counted"
        assert {v["reader"] for v in stored.values()} == {"alice"}

        browser.refresh()
        _open_study(browser, uid)
        shown = {key: _row(browser, key).find_element(By.CLASS_NAME, "verdict-shown").text
                 for key in ("organ/spleen", "hemorrhage", "organ/liver")}
        assert shown["organ/spleen"].startswith("accepted by Dr Alice Example (alice) at "
                                                + stored["organ/spleen"]["created_at"])
        assert "corrected to 61.5 mL" in shown["hemorrhage"]
        assert "bowel content counted" in shown["hemorrhage"]
        assert shown["organ/liver"] == ""
        chosen = _row(browser, "hemorrhage").find_element(By.CLASS_NAME, "verdict-corrected")
        assert "chosen" in chosen.get_attribute("class")

        browser.get(f"{api.url}/agreement")
        _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
            "data-loaded") == "true", what="the agreement figures")
        overall = browser.find_element(By.ID, "agreement-overall").text
        assert "1 of 2 verdicts accepted (50.0 %)" in overall and "1 corrected" in overall
        by_type = {r.get_attribute("data-finding-type"): r.text for r in browser.find_elements(
            By.CSS_SELECTOR, "#agreement-by-type tbody tr")}
        assert set(by_type) == {"hemorrhage", "organ_injury"}
        assert "0.0 %" in by_type["hemorrhage"]
        assert f"{abs(ai_blood - 61.5):.3f}".rstrip("0").rstrip(".") in by_type["hemorrhage"]
        assert "100.0 %" in by_type["organ_injury"]
        backends = [r.text for r in browser.find_elements(
            By.CSS_SELECTOR, "#agreement-by-backend tbody tr")]
        assert any("hu-baseline" in b for b in backends) and any("rule-table" in b for b in backends)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#agreement-series tbody tr")) == 2


def test_a_service_token_sees_verdicts_but_no_controls(tmp_path, browser):  # noqa: F811
    with AuditedApi(tmp_path / "data") as api:
        uid = insert_study(api.index, findings_dict("bleed"))
        browser.get(f"{api.url}/")
        _wait(browser, lambda d: d.find_element(By.ID, "token-input").is_displayed(),
              what="sign-in form")
        browser.find_element(By.ID, "token-input").send_keys(AUTH["Authorization"].split()[1])
        browser.find_element(By.ID, "token-submit").click()
        _wait(browser, lambda d: "Service token (token-1)" in d.find_element(By.ID, "signed-in").text,
              what="the service token named")
        spleen = _open_study(browser, uid)
        assert spleen.find_elements(By.TAG_NAME, "button") == []
        assert "reader account" in browser.find_element(By.ID, "verdict-note").text
