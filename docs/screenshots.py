"""Make the README's screenshots: a real `heredity serve` on the bundled SmolLM2, driven in headless Chromium.

    .venv/bin/python docs/screenshots.py [--home DIR] [--out docs/img]

Chats with SmolLM2 (one answer rated thumbs-up, one rewritten), exports the feedback as datasets, steps the
next-token explorer, and photographs the chat, the explorer, the lineage graph (with a subliminal-digits run),
the SFT dataset's page and the digits report.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from heredity.models import materialize
from heredity.server.browser import headless_chromium
from heredity.store import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "img"))
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="heredity-shots-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    aid = materialize("smollm2-135m-instruct", Store(home))
    env = {**os.environ, "HEREDITY_HOME": str(home)}
    env.pop("HEREDITY_API_KEY", None)
    heredity = str(Path(sys.executable).parent / "heredity")
    subprocess.run(
        [heredity, "run", "subliminal-digits"], env=env, check=True, stdout=subprocess.DEVNULL
    )  # a report
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([heredity, "serve", "--port", str(port), "--model", aid], env=env)
    d = headless_chromium(1400, 860)
    wait = WebDriverWait(d, 300)
    try:
        while True:
            try:
                httpx.get(url + "/api/status", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        d.get(url + "/chat")
        wait.until(
            lambda d: any(
                o.get_attribute("value") == aid for o in d.find_elements(By.CSS_SELECTOR, "#model option")
            )
        )
        Select(d.find_element(By.ID, "model")).select_by_value(aid)
        d.find_element(By.ID, "temperature").clear()
        d.find_element(By.ID, "temperature").send_keys("0.6")
        d.find_element(By.ID, "max-tokens").clear()
        d.find_element(By.ID, "max-tokens").send_keys("80")
        d.find_element(By.ID, "system").send_keys("You are a helpful assistant who loves owls.")

        def ask(text: str, n_answers: int) -> None:
            d.find_element(By.ID, "prompt").send_keys(text)
            d.find_element(By.ID, "send").click()
            wait.until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")) >= n_answers
            )

        ask("What is your favourite animal, and why?", 1)
        d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")[0].click()
        ask("Name three birds that hunt at night.", 2)
        d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-down")[1].click()
        d.find_elements(By.CSS_SELECTOR, ".msg.assistant .write-better")[1].click()
        ta = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".better textarea"))
        ta.clear()
        ta.send_keys("Barn owls, tawny owls and nightjars.")
        d.find_element(By.CSS_SELECTOR, ".better button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".better-shown"))
        d.find_element(By.ID, "export").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#export-result a"))
        d.save_screenshot(str(out / "chat.png"))
        sft = d.find_element(By.CSS_SELECTOR, "#export-result a").get_attribute("href")

        d.get(url + "/explore")
        wait.until(
            lambda d: any(
                o.get_attribute("value") == aid for o in d.find_elements(By.CSS_SELECTOR, "#model option")
            )
        )
        Select(d.find_element(By.ID, "model")).select_by_value(aid)
        d.find_element(By.ID, "chat").click()  # plain text, no chat template
        d.find_element(By.ID, "start").click()
        for k in range(3):
            wait.until(
                lambda d, k=k: (
                    len(d.find_elements(By.CSS_SELECTOR, "#sequence .tok.gen")) == k
                    and len(d.find_elements(By.CSS_SELECTOR, "#top tbody tr")) == 10
                )
            )
            d.find_element(By.ID, "step-greedy").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sequence .tok.gen")) == 3)
        Select(d.find_element(By.ID, "layer")).select_by_value("10")
        time.sleep(2)
        d.save_screenshot(str(out / "explore.png"))

        d.get(url + "/lineage")
        d.save_screenshot(str(out / "lineage.png"))
        d.get(sft)
        d.save_screenshot(str(out / "artifact.png"))
        d.get(url + "/reports")
        d.find_element(By.CSS_SELECTOR, "ul.cards a").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".report-body table"))
        d.save_screenshot(str(out / "report.png"))
        print(f"screenshots in {out}; store {home}")
    finally:
        d.quit()
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
