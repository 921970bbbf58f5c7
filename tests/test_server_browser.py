"""The pages in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

Screenshots go to test-artifacts/screenshots/ (or $HEREDITY_TEST_ARTIFACTS/screenshots)."""

import os
import re
from pathlib import Path

import httpx
import pytest

SHOTS = (
    Path(os.environ.get("HEREDITY_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    / "screenshots"
)


@pytest.fixture(scope="module")
def browser():
    from heredity.server.browser import chromium_paths, headless_chromium

    if chromium_paths() is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium/chromedriver missing; `make test` installs the Debian packages "
                "chromium chromium-driver"
            )
        pytest.skip("chromium not installed (make test installs it)")
    driver = headless_chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _visible(s: str) -> str:
    """Text as a browser shows it, minus whitespace and control characters (the tiny
    model writes raw bytes)."""
    return "".join(ch for ch in s if ch.isprintable() and not ch.isspace())


def _text_of(driver, css: str) -> str | None:
    """The text of the first element matching ``css``, or None if the page replaced it while it was read."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.CSS_SELECTOR, css).text
    except StaleElementReferenceException:
        return None


def _wait(driver, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def test_chat_stream_thumbs_up_then_explorer(browser, live_server, server_home):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    aid, d = server_home[1], browser
    d.get(live_server.url + "/chat")
    _wait(
        d,
        lambda d: any(
            o.get_attribute("value") == aid for o in d.find_elements(By.CSS_SELECTOR, "#model option")
        ),
    )
    Select(d.find_element(By.ID, "model")).select_by_value(aid)
    d.find_element(By.ID, "max-tokens").clear()
    d.find_element(By.ID, "max-tokens").send_keys("24")
    d.find_element(By.ID, "prompt").send_keys("Which animal do you love?")
    d.find_element(By.ID, "send").click()
    # the streamed answer appears in the page, then the stored conversation is shown with feedback buttons
    _wait(d, lambda d: (_text_of(d, ".msg.assistant .text") or "").strip())
    up = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up"))[0]
    up.click()
    _wait(
        d,
        lambda d: "on" in d.find_element(By.CSS_SELECTOR, ".msg.assistant .thumb-up").get_attribute("class"),
    )
    convs = httpx.get(live_server.url + "/api/conversations").json()["data"]
    conv = httpx.get(f"{live_server.url}/api/conversations/{convs[0]['id']}").json()
    assert conv["messages"][0]["content"] == "Which animal do you love?"
    assert conv["messages"][1]["rating"] == 1
    # what the page shows is what was stored (read afresh: the page re-renders the stored conversation, so the
    # element that streamed in may have been replaced)
    shown = _wait(d, lambda d: _text_of(d, ".msg.assistant .text"))
    assert _visible(conv["messages"][1]["content"]) == _visible(shown)
    d.save_screenshot(str(SHOTS / "chat.png"))

    d.find_element(By.LINK_TEXT, "Next-token explorer").click()
    _wait(
        d,
        lambda d: any(
            o.get_attribute("value") == aid for o in d.find_elements(By.CSS_SELECTOR, "#model option")
        ),
    )
    Select(d.find_element(By.ID, "model")).select_by_value(aid)
    d.find_element(By.ID, "start").click()
    rows = _wait(
        d,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#top tbody tr")
            if len(d.find_elements(By.CSS_SELECTOR, "#top tbody tr")) == 10
            else None
        ),
    )
    probs = [float(re.sub("%$", "", r.find_element(By.CSS_SELECTOR, "td.p").text)) for r in rows]
    assert all(0 < p <= 100 for p in probs) and probs == sorted(probs, reverse=True) and sum(probs) <= 100.01
    pick = rows[2].get_attribute("data-id")
    rows[2].click()  # branch on the third candidate
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#sequence .tok.gen"))
    gen = d.find_elements(By.CSS_SELECTOR, "#sequence .tok.gen")
    assert len(gen) == 1 and gen[0].get_attribute("title").endswith(f"id {pick}")
    assert d.find_elements(By.CSS_SELECTOR, "#heatmap td")
    d.save_screenshot(str(SHOTS / "explore.png"))

    d.get(live_server.url + "/lineage")
    node = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'svg a.node[data-id="{aid}"]'))[0]
    d.save_screenshot(str(SHOTS / "lineage.png"))
    d.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", node)
    _wait(d, lambda d: aid in d.find_element(By.TAG_NAME, "h2").text)
    assert "init-tiny" in d.page_source
