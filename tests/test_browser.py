"""The example app (examples/app.py) in a real browser.

Headless Chromium, driven by Playwright for Python, against the example app
served by Werkzeug on a loopback port, on the zero-config SQLite store in a
temporary instance folder. What a browser adds over the test client: its
own cookie jar (HttpOnly, SameSite), its back button and its page cache,
and several contexts that must not share a session.

Needs ``playwright`` (the ``browser`` extra) and Debian's ``chromium`` at
/usr/bin/chromium (``TOWERSESS_CHROMIUM`` to use another); scripts/test.sh
installs both. No browser is ever downloaded. Without them the tests skip,
or fail when ``TOWERSESS_REQUIRE_SERVICES`` is set (CI).

On a failure, a screenshot of every open page is saved under
``TOWERSESS_ARTIFACTS`` (default: pytest's temporary directory), and its path
is printed with the failure.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import re
import sys
import threading
import types
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from itsdangerous import Signer
from werkzeug.serving import make_server

from flask_towersess.session import stored_key
from flask_towersess.stores.base import SessionStore

from .services import service_unavailable

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser
    from playwright.sync_api import BrowserContext
    from playwright.sync_api import Page

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the browser fixture reports it
    sync_playwright = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("TOWERSESS_CHROMIUM", "/usr/bin/chromium")
# Headless, no sandbox (CI runs as root), and nothing that talks to the
# network on its own: the only server it may reach is ours, on loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-proxy-server",
]
PASSWORD = "correct horse"
TIMEOUT_MS = 15_000
#: A session cookie: a 43-character key, a dot, a signature.
SIGNED_KEY = re.compile(r"[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]+")

_names = itertools.count(1)


def unique_name(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> t.Iterator[Browser]:
    if sync_playwright is None:
        service_unavailable(
            "playwright is not installed (pip install -e '.[browser]', or"
            " scripts/test.sh)"
        )
    if not os.access(CHROMIUM, os.X_OK):
        service_unavailable(
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or"
            " scripts/browser.sh; TOWERSESS_CHROMIUM names another binary)"
        )
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                timeout=60_000,
                # Playwright turns the back/forward cache off; real browsers
                # have it on, and it is what shows a page again after a
                # logout, unless the page was sent with no-store.
                ignore_default_args=["--disable-back-forward-cache"],
            )
        except PlaywrightError as exc:
            service_unavailable(f"Chromium at {CHROMIUM} does not start: {exc}")
        yield browser
        browser.close()


def load_example() -> types.ModuleType:
    path = ROOT / "examples" / "app.py"
    spec = importlib.util.spec_from_file_location("towersess_browser_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server(t.NamedTuple):
    url: str
    app: Flask

    @property
    def store(self) -> SessionStore:
        return self.app.extensions["towersess"].get_store(self.app)  # type: ignore[no-any-return]


def serve_example(
    tmp_path_factory: pytest.TempPathFactory, store: str | None
) -> t.Iterator[Server]:
    """The example app on 127.0.0.1 (a free port), in a thread, on ``store``
    (``None``: the SQLite default, whatever the environment)."""
    example = load_example()
    instance = tmp_path_factory.mktemp("browser") / "instance"
    app = example.create_app(
        {
            "SECRET_KEY": "browser test secret",
            "SESSION_STORE": store,
            "SESSION_COOKIE_SAMESITE": "Lax",
        },
        instance_path=str(instance),
    )
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_port}", app)
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()
        for each in (app, example.app):
            each.extensions["towersess"].get_store(each).close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    """The example app on its zero-config SQLite store."""
    yield from serve_example(tmp_path_factory, None)


#: The store the "Your sessions" page is driven on: the zero-configuration
#: SQLite default, as `make demo` runs it.
PER_USER_STORE = None


@pytest.fixture(scope="module")
def per_user_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    """The example app on a store with a per-user index."""
    yield from serve_example(tmp_path_factory, PER_USER_STORE)


@pytest.fixture
def new_context(
    browser: Browser,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[t.Callable[..., BrowserContext]]:
    """Make browser contexts (separate cookie jars); closed after the test,
    with screenshots of their pages if it failed."""
    contexts: list[BrowserContext] = []
    failed_before = request.session.testsfailed

    def make(**options: t.Any) -> BrowserContext:
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context

    yield make

    # The test's own report is in by now: a failure has been counted.
    if request.session.testsfailed > failed_before:
        save_screenshots(request.node.name, contexts, tmp_path_factory)
    for context in contexts:
        context.close()


def save_screenshots(
    test_name: str,
    contexts: list[BrowserContext],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = os.environ.get("TOWERSESS_ARTIFACTS")
    folder = (
        Path(base) / "browser" if base else tmp_path_factory.getbasetemp() / "browser"
    )
    folder.mkdir(parents=True, exist_ok=True)
    safe_name = re.sub(r"[^\w.-]+", "_", test_name)
    for c, context in enumerate(contexts):
        for p, page in enumerate(context.pages):
            path = folder / f"{safe_name}-context{c}-page{p}.png"
            try:
                page.screenshot(path=str(path), full_page=True)
            except PlaywrightError as exc:
                print(f"no screenshot of {page.url}: {exc}", file=sys.stderr)
            else:
                print(f"screenshot of {page.url}: {path}", file=sys.stderr)


@pytest.fixture
def page(new_context: t.Callable[..., BrowserContext]) -> Page:
    return new_context().new_page()


# -- helpers ---------------------------------------------------------------------


def flash(page: Page) -> t.Any:
    return page.locator("p.flash")


def fill_user_form(page: Page, name: str, password: str) -> None:
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("#submit")


def sign_up(page: Page, server: Server, name: str) -> None:
    page.goto(f"{server.url}/signup")
    fill_user_form(page, name, PASSWORD)
    expect(flash(page)).to_have_text(f"Welcome, {name}! Your account is ready.")
    expect(page.locator("#user")).to_have_text(name)


def log_in(page: Page, server: Server, name: str) -> None:
    page.goto(f"{server.url}/login")
    fill_user_form(page, name, PASSWORD)
    expect(flash(page)).to_have_text(f"Logged in as {name}.")


def log_out(page: Page) -> None:
    page.click("#logout")
    expect(flash(page)).to_have_text("You have been logged out.")
    expect(page.locator("body")).to_contain_text("Not logged in.")


def session_cookies(context: BrowserContext) -> list[t.Any]:
    return [c for c in context.cookies() if c["name"] == "session"]


# -- tests -----------------------------------------------------------------------


def test_sign_up_log_in_and_count(page: Page, server: Server) -> None:
    name = unique_name("ann")
    sign_up(page, server, name)
    log_out(page)
    log_in(page, server, name)
    for expected in ("1", "2"):
        page.goto(f"{server.url}/counter")
        expect(page.locator("#count")).to_have_text(expected)
    page.reload()
    expect(page.locator("#count")).to_have_text("3")
    page.click("text=Home")
    expect(page.locator("#count")).to_have_text("3")


def test_cookie_is_httponly_samesite_and_holds_only_the_id(
    page: Page, server: Server
) -> None:
    name = unique_name("carol")
    sign_up(page, server, name)
    page.goto(f"{server.url}/counter")
    expect(page.locator("#count")).to_have_text("1")

    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["session"]
    [cookie] = cookies
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["domain"] == "127.0.0.1"
    assert cookie["path"] == "/"
    assert cookie["expires"] == -1  # a browser-session cookie
    # Page scripts cannot see it.
    assert page.evaluate("document.cookie") == ""

    # Nothing but the session key, signed: no data, not the user's name.
    value = cookie["value"]
    assert SIGNED_KEY.fullmatch(value), value
    assert name not in value
    interface = server.app.session_interface
    signer = Signer(
        server.app.secret_key,  # type: ignore[arg-type]
        salt=interface.salt,  # type: ignore[attr-defined]
        digest_method=hashlib.sha256,
    )
    key = signer.unsign(value).decode()
    assert key == value.partition(".")[0]
    # The data is on the server, under that key's hash.
    record = server.store.load(stored_key(key))
    assert record is not None
    assert b"counter" in record.payload


def test_flash_messages_show_once(page: Page, server: Server) -> None:
    name = unique_name("dave")
    sign_up(page, server, name)
    page.reload()
    expect(page.locator("#user")).to_have_text(name)
    expect(flash(page)).to_have_count(0)

    log_out(page)
    log_in(page, server, name)
    page.click("text=Home")
    expect(flash(page)).to_have_count(0)


def test_validation_errors_show_once(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/signup")
    fill_user_form(page, unique_name("erin"), "short")
    expect(flash(page)).to_have_text("Passwords need at least 8 characters.")
    expect(flash(page)).to_have_class("flash error")
    page.goto(f"{server.url}/signup")
    expect(flash(page)).to_have_count(0)
    assert session_cookies(page.context) == []

    page.goto(f"{server.url}/login")
    fill_user_form(page, "nobody-at-all", PASSWORD)
    expect(flash(page)).to_have_text("Unknown username or wrong password.")
    page.goto(f"{server.url}/")
    expect(page.locator("body")).to_contain_text("Not logged in.")
    expect(flash(page)).to_have_count(0)


def test_logout_removes_the_cookie_and_back_shows_nothing(
    page: Page, server: Server
) -> None:
    name = unique_name("frank")
    sign_up(page, server, name)
    page.goto(f"{server.url}/counter")
    expect(page.locator("body")).to_contain_text(f"{name}, you have loaded this page")
    [cookie] = session_cookies(page.context)
    old_key = cookie["value"].partition(".")[0]
    assert server.store.load(stored_key(old_key)) is not None

    log_out(page)
    assert session_cookies(page.context) == []
    assert server.store.load(stored_key(old_key)) is None

    # Back to the private pages: with Cache-Control: no-store, neither the
    # back/forward cache nor the HTTP cache may show them again, so each is
    # fetched again, and the server no longer shows them.
    page.go_back(wait_until="commit")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fcounter$"))
    expect(page.locator("body")).not_to_contain_text(name)
    expect(page.locator("body")).not_to_contain_text("you have loaded this page")
    page.go_back(wait_until="commit")
    expect(page.locator("body")).to_contain_text("Not logged in.")
    expect(page.locator("body")).not_to_contain_text(name)


def test_second_context_does_not_share_the_session(
    new_context: t.Callable[..., BrowserContext], server: Server
) -> None:
    first = new_context().new_page()
    name = unique_name("grace")
    sign_up(first, server, name)
    first.goto(f"{server.url}/counter")
    expect(first.locator("#count")).to_have_text("1")

    second = new_context().new_page()
    second.goto(f"{server.url}/")
    expect(second.locator("body")).to_contain_text("Not logged in.")
    expect(second.locator("body")).not_to_contain_text(name)
    second.goto(f"{server.url}/counter")
    expect(second).to_have_url(re.compile(r"/login\?next=%2Fcounter$"))
    assert session_cookies(first.context) != session_cookies(second.context)

    # The same user logged in elsewhere gets a session of its own.
    log_in(second, server, name)
    second.goto(f"{server.url}/counter")
    expect(second.locator("#count")).to_have_text("1")
    first.reload()
    expect(first.locator("#count")).to_have_text("2")


# -- "Your sessions" -------------------------------------------------------------


def two_devices(
    new_context: t.Callable[..., BrowserContext], server: Server
) -> tuple[Page, Page, str]:
    """A new user, logged in on a "laptop" and on a "phone": two browser
    contexts, each with its own user agent and cookie jar."""
    laptop = new_context(user_agent="Laptop browser").new_page()
    phone = new_context(user_agent="Phone browser").new_page()
    name = unique_name("sam")
    sign_up(laptop, server, name)
    log_in(phone, server, name)
    return laptop, phone, name


def session_rows(page: Page) -> t.Any:
    return page.locator("#sessions tr.session")


def open_sessions(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/")
    page.click("text=Your sessions")
    expect(page).to_have_url(f"{server.url}/sessions")


def expect_devices(page: Page, current: str, others: list[str]) -> None:
    """The sessions page lists ``current`` (marked as this device) and
    ``others``, and nothing else."""
    rows = session_rows(page)
    expect(rows).to_have_count(1 + len(others))
    this = page.locator("#sessions tr.session.current")
    expect(this).to_have_count(1)
    expect(this.locator(".device")).to_contain_text(current)
    expect(this.locator(".this-device")).to_have_text("(this device)")
    other_rows = page.locator("#sessions tr.session:not(.current)")
    expect(other_rows.locator(".device")).to_have_text(
        [re.compile(re.escape(name)) for name in sorted(others)]
    )


def expect_logged_out(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/sessions")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fsessions$"))
    page.goto(f"{server.url}/")
    expect(page.locator("body")).to_contain_text("Not logged in.")


def test_sign_out_another_device(
    new_context: t.Callable[..., BrowserContext], per_user_server: Server
) -> None:
    server = per_user_server
    laptop, phone, name = two_devices(new_context, server)
    open_sessions(laptop, server)
    expect_devices(laptop, "Laptop browser", ["Phone browser"])
    open_sessions(phone, server)
    expect_devices(phone, "Phone browser", ["Laptop browser"])
    expect(phone.locator("#count-devices")).to_have_text(
        "You are logged in on 2 devices."
    )

    # From the laptop, sign the phone out.
    laptop.locator("#sessions tr.session:not(.current) button.sign-out").click()
    expect(flash(laptop)).to_have_text("That device has been signed out.")
    expect_devices(laptop, "Laptop browser", [])
    expect(laptop.locator("#sign-out-others")).to_have_count(0)

    # The phone's next request is logged out; the laptop is not.
    phone.reload()
    expect(phone).to_have_url(re.compile(r"/login\?next=%2Fsessions$"))
    expect_logged_out(phone, server)
    laptop.goto(f"{server.url}/")
    expect(laptop.locator("#user")).to_have_text(name)

    # Logging in again on the phone lists it again.
    log_in(phone, server, name)
    open_sessions(laptop, server)
    expect_devices(laptop, "Laptop browser", ["Phone browser"])


def test_sign_out_everywhere_else(
    new_context: t.Callable[..., BrowserContext], per_user_server: Server
) -> None:
    server = per_user_server
    laptop, phone, name = two_devices(new_context, server)
    open_sessions(phone, server)
    expect_devices(phone, "Phone browser", ["Laptop browser"])

    # From the phone this time: everything but the phone ends.
    phone.click("#sign-out-others")
    expect(flash(phone)).to_have_text("Signed out 1 other session.")
    expect_devices(phone, "Phone browser", [])

    expect_logged_out(laptop, server)
    phone.goto(f"{server.url}/counter")
    expect(phone.locator("#count")).to_have_text("1")
    # The laptop's old cookie is gone or dead: it has no session of the user.
    for cookie in session_cookies(laptop.context):
        key = cookie["value"].partition(".")[0]
        record = server.store.load(stored_key(key))
        assert record is None or record.user_id is None


def test_sign_out_this_device_from_its_own_row(
    new_context: t.Callable[..., BrowserContext], per_user_server: Server
) -> None:
    server = per_user_server
    laptop, phone, _ = two_devices(new_context, server)
    open_sessions(laptop, server)
    laptop.locator("#sessions tr.session.current button.sign-out").click()
    expect(flash(laptop)).to_have_text("You have been logged out.")
    expect_logged_out(laptop, server)
    open_sessions(phone, server)
    expect_devices(phone, "Phone browser", [])
