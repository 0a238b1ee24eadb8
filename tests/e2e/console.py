"""The operator's console in a real headless browser (Debian's chromium
through chromedriver, driven by Selenium). Called by the Rust test
`console::the_console_in_a_browser` with the broker's address, the admin
token and an agent token; prints one JSON line of what it saw and saves
screenshots of the main pages.

Usage: console.py BASE_URL ADMIN_TOKEN AGENT_TOKEN SCREENSHOT_DIR
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE, ADMIN_TOKEN, AGENT_TOKEN, SHOTS = sys.argv[1:5]
KEY = "sk-console-" + os.urandom(8).hex()
MARKUP = '<b id="injected">bold</b> '


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("LATCHKEY_CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    # The driver Debian installs: Selenium Manager never downloads one.
    service = Service(executable_path=os.environ.get("LATCHKEY_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def proxied(path):
    request = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + AGENT_TOKEN})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body.decode(errors="replace")


def main():
    seen = {}
    d = browser()
    # A page being replaced makes elements stale mid-read: read again.
    wait = WebDriverWait(d, 20, ignored_exceptions=(StaleElementReferenceException,))

    def shot(name):
        d.save_screenshot(os.path.join(SHOTS, name + ".png"))

    def go(path):
        d.get(BASE + path)

    def flash():
        for _ in range(20):
            try:
                return " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, ".flash"))
            except StaleElementReferenceException:
                continue
        return ""

    try:
        # Pages redirect to sign-in; a wrong token is refused.
        go("/ui/credentials")
        seen["redirected_to_login"] = d.current_url.endswith("/ui/login")
        d.find_element(By.NAME, "token").send_keys("not-the-admin-token")
        d.find_element(By.CSS_SELECTOR, "#login button").click()
        seen["wrong_token_refused"] = "not the admin token" in d.page_source
        shot("sign-in")
        d.find_element(By.NAME, "token").send_keys(ADMIN_TOKEN)
        d.find_element(By.CSS_SELECTOR, "#login button").click()
        wait.until(expected_conditions.url_contains("/ui/credentials"))
        cookie = d.get_cookie("lk_console")
        seen["cookie"] = {k: cookie.get(k) for k in ("httpOnly", "sameSite", "path")}

        # Add an api-key credential through the form the plugin describes.
        go("/ui/new-credential?scheme=api-key")
        form = d.find_element(By.ID, "credential-form")
        seen["form_fields"] = sorted(
            e.get_attribute("name") for e in form.find_elements(By.CSS_SELECTOR, "input[name^='config.'], input[name^='secret.']")
        )
        seen["secret_is_password"] = form.find_element(By.NAME, "secret.key").get_attribute("type") == "password"
        form.find_element(By.NAME, "name").send_keys("console-key")
        form.find_element(By.NAME, "destinations").send_keys("localhost")
        form.find_element(By.NAME, "config.prefix").send_keys("Bearer ")
        form.find_element(By.NAME, "secret.key").send_keys(KEY + "\n")  # Enter submits the form
        wait.until(expected_conditions.url_contains("/ui/credentials/console-key"))
        seen["created_flash"] = flash()

        # Attach it to the agent, and route to it.
        Select(d.find_element(By.CSS_SELECTOR, "#attach select")).select_by_value("bot")
        d.find_element(By.CSS_SELECTOR, "#attach button").click()
        wait.until(lambda d: "attached" in flash())
        seen["attached"] = "bot" in d.find_element(By.ID, "attachments").text
        go("/ui/routes")
        form = d.find_element(By.ID, "route-form")
        form.find_element(By.NAME, "name").send_keys("console")
        form.find_element(By.NAME, "upstream").send_keys(os.environ["LATCHKEY_UPSTREAM"])
        Select(form.find_element(By.NAME, "credential")).select_by_value("console-key")
        form.find_element(By.CSS_SELECTOR, "button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".flash"))
        seen["route_flash"] = flash()
        seen["proxy_before"] = proxied("/proxy/console/echo")[0]

        # Disable it with the switch (a confirmation), then the proxy refuses.
        go("/ui/credentials/console-key")
        d.find_element(By.CSS_SELECTOR, "#state + form button").click()
        alert = wait.until(expected_conditions.alert_is_present())
        seen["confirm_text"] = alert.text
        alert.accept()
        wait.until(lambda d: d.find_element(By.ID, "state").text == "disabled")
        status, body = proxied("/proxy/console/echo")
        seen["proxy_after"] = [status, body["error"]["code"] if isinstance(body, dict) else body]
        go("/ui/credentials")
        shot("credentials")
        seen["list_shows_disabled"] = "disabled" in d.find_element(By.ID, "credentials").text

        # Markup in a value is text, never an element.
        go("/ui/new-credential?scheme=api-key")
        form = d.find_element(By.ID, "credential-form")
        form.find_element(By.NAME, "name").send_keys("markup-key")
        form.find_element(By.NAME, "config.prefix").send_keys(MARKUP)
        form.find_element(By.NAME, "secret.key").send_keys(KEY + "\n")
        wait.until(expected_conditions.url_contains("/ui/credentials/markup-key"))
        seen["markup_flash"] = flash()
        seen["markup_as_text"] = MARKUP.strip() in d.find_element(By.ID, "credential").text
        seen["markup_injected"] = len(d.find_elements(By.ID, "injected"))
        shot("credential")

        # A registration token, seen exactly once.
        go("/ui/tokens")
        d.find_element(By.CSS_SELECTOR, "#token-form button").click()
        token = wait.until(lambda d: d.find_element(By.ID, "token")).text.strip()
        seen["token_shape"] = token.startswith("lk_reg_")
        shot("token-once")
        go("/ui/once")
        seen["token_on_reload"] = token in d.page_source
        go("/ui/tokens")
        seen["token_listed_by_prefix"] = token[:11] in d.page_source
        seen["token_shown_again"] = token in d.page_source
        shot("tokens")
        for page in ("agents", "routes", "plugins", "audit", "idps"):
            go("/ui/" + page)
            shot(page)
        go("/ui/audit")
        seen["audit_has_console_actor"] = "console:admin" in d.page_source
        if not seen["audit_has_console_actor"]:
            print(d.find_element(By.TAG_NAME, "main").text[:3000], file=sys.stderr)
        # No secret value ever reaches a page.
        pages = []
        for page in ("credentials", "credentials/console-key", "credentials/markup-key", "audit", "agents", "routes"):
            go("/ui/" + page)
            pages.append(d.page_source)
        seen["secret_in_a_page"] = any(KEY in p for p in pages)

        # A state change without the CSRF token is refused, with the session cookie.
        session = d.get_cookie("lk_console")["value"]
        request = urllib.request.Request(
            BASE + "/ui/credentials/console-key/enable",
            data=b"force=on",
            headers={"Cookie": "lk_console=" + session, "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=10)
            seen["csrf_missing_status"] = 200
        except urllib.error.HTTPError as e:
            seen["csrf_missing_status"] = e.code
        go("/ui/credentials/console-key")
        seen["still_disabled"] = d.find_element(By.ID, "state").text == "disabled"

        # After sign-out, pages redirect to sign-in.
        d.find_element(By.ID, "sign-out").click()
        wait.until(expected_conditions.url_contains("/ui/login"))
        go("/ui/credentials")
        seen["after_sign_out"] = d.current_url.endswith("/ui/login")
        seen["headers"] = dict(urllib.request.urlopen(BASE + "/ui/login", timeout=10).headers)
    except Exception:
        print("at", d.current_url, file=sys.stderr)
        print(d.page_source[:4000], file=sys.stderr)
        raise
    finally:
        d.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
