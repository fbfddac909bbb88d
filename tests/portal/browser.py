"""A real browser on the portal: Debian's chromium, headless, driven through Debian's chromedriver by Selenium,
against the app served by uvicorn over HTTPS on 127.0.0.1 (a throwaway self-signed certificate, so the session
cookie is Secure as on the master).

Nothing here downloads a browser or a driver: the driver's path is given, so Selenium Manager never runs (and
``SE_OFFLINE=1`` stops it if a later Selenium tried). The helpers are context managers, plain functions and
one small ASGI switch, so the portal's tests and the lab's can build their own fixtures on them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds a page, an element or the server is given


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: the browser tests need Debian's chromium and chromium-driver ({package})"
    return None


# --- the server -----------------------------------------------------------------------------------------------

def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its subjectAltName too) and its key, valid one day: (certfile, keyfile)."""
    cert, key = directory / "portal.crt", directory / "portal.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    key.chmod(0o600)
    return cert, key


class AppSwitch:
    """An ASGI app that hands each request to ``app``: one server (and one browser) per test module, a fresh
    portal (its own database, runner and secret) per test. No app: 503."""

    def __init__(self) -> None:
        self.app: Callable[..., Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"no portal is mounted"})


@contextlib.contextmanager
def serve(app: Any, certfile: Path, keyfile: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """``app`` served by uvicorn over HTTPS on a free port of ``host``, in a background thread, until the block
    ends; yields its base URL once it answers."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))  # the port is ours from here on: no race with another test run
    base = f"https://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
                                           lifespan="off", log_level="warning", proxy_headers=False,
                                           server_header=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="portal-uvicorn", daemon=True)
    thread.start()
    try:
        _wait_answers(base, certfile, thread)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _wait_answers(base: str, certfile: Path, thread: threading.Thread) -> None:
    context = ssl.create_default_context(cafile=str(certfile))  # the server's own certificate, verified
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(f"{base}/login", context=context, timeout=2):
                return
        except urllib.error.HTTPError as err:  # an answer, even 503 (no app mounted yet)
            err.close()
            return
        except OSError as err:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn does not answer on {base}: {err}") from err
            time.sleep(0.05)


# --- the browser ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def chromium(profile: Path, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """Headless chromium (its profile in ``profile``) through chromedriver; the server's self-signed certificate
    is accepted (the ``acceptInsecureCerts`` capability), nothing else about TLS is relaxed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--user-data-dir={profile / 'data'}",
                f"--window-size={width},{height}", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions", "--password-store=basic"):
        options.add_argument(arg)
    options.accept_insecure_certs = True
    with mock.patch.dict(os.environ, {"SE_OFFLINE": "1"}):
        service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile / "chromedriver.log"))
        driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT * 2)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def clear_cookies(driver: Any) -> None:
    """Forget every cookie of every site (a new visitor)."""
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
    """``condition(driver)``'s first true value within ``timeout`` seconds; else fail naming ``what`` and the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise AssertionError(f"waited {timeout} s for {what}; at {driver.current_url}:\n{text(driver)}") from None


def by_id(driver: Any, element_id: str) -> Any:
    """The element with this id, waited for."""
    from selenium.webdriver.common.by import By

    return wait_for(driver, lambda d: d.find_elements(By.ID, element_id)[:1] and d.find_element(By.ID, element_id),
                    f"#{element_id}")


def text(driver: Any) -> str:
    """The page's visible text."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def click_and_wait(driver: Any, element: Any) -> None:
    """Click ``element`` (a submit button, a link) and wait until the next page has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait_for(driver, ec.staleness_of(old), "the next page")
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the page to load")


def fill(driver: Any, values: dict[str, str]) -> None:
    """Type ``values`` into the inputs with these ids (selects: pick the option with that text)."""
    from selenium.webdriver.support.ui import Select

    for element_id, value in values.items():
        element = by_id(driver, element_id)
        if element.tag_name == "select":
            Select(element).select_by_visible_text(value)
        else:
            element.clear()
            element.send_keys(value)


def table(driver: Any, selector: str) -> list[list[str]]:
    """The cells' texts of each body row of the table ``selector`` (one round trip, not one per cell)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'),"
        " tr => Array.from(tr.cells, td => td.innerText.trim()))", selector)


def status(driver: Any) -> int:
    """The HTTP status of the page the browser shows (PerformanceNavigationTiming.responseStatus)."""
    return driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")


def fetch(driver: Any, url: str, method: str = "GET", redirect: str = "follow") -> dict[str, Any]:
    """``url`` fetched by the page's own JavaScript, with its cookies: the status, the final URL and the
    headers (a redirect with ``redirect="manual"``: status 0, type opaqueredirect)."""
    return driver.execute_async_script(
        "const [url, method, redirect, done] = arguments;"
        "fetch(url, {method, redirect, credentials: 'same-origin'})"
        ".then(r => done({status: r.status, type: r.type, url: r.url, redirected: r.redirected,"
        "                 headers: Object.fromEntries(r.headers.entries())}))"
        ".catch(e => done({status: -1, error: String(e)}));", url, method, redirect)


def login(driver: Any, base: str, name: str, password: str) -> None:
    """Log in through the login form; returns on the user's home page (fails with the page's text if not)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/login")
    fill(driver, {"name": name, "password": password})
    click_and_wait(driver, by_id(driver, "login"))
    if not driver.find_elements(By.ID, "whoami"):
        raise AssertionError(f"{name} is not logged in; at {driver.current_url}:\n{text(driver)}")


def screenshot(driver: Any, name: str) -> Path:
    """The whole page, below the fold too, as ``$VCL_SCREENSHOTS/<name>.png`` (default build/screenshots in the
    checkout); returns its path."""
    directory = Path(os.environ.get("VCL_SCREENSHOTS") or REPO / "build" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
