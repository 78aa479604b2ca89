"""The operator page in a real headless Chromium against a real `dlm serve`: it loads with nothing but
DLM on the network, signs in with a token, shows an item with its replicas and history, follows a
copy to 100 %, and refuses a reader's cancel. Each page's screenshot goes to docs/screenshots with
DLM_UPDATE_SCREENSHOTS=1."""

import json
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import Registry, Server
from tests.migration.conftest import copy

# docs/screenshots when asked to renew them (DLM_UPDATE_SCREENSHOTS=1); otherwise a test run leaves the
# checkout as it found it.
SCREENSHOTS = (
    Path(__file__).parents[2] / "docs" / "screenshots"
    if os.environ.get("DLM_UPDATE_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / f"dlm-screenshots-{os.getpid()}"
)
ADMIN_TOKEN = "dlm_" + secrets.token_urlsafe(32)
MiB = 1024 * 1024


def wait(driver: Any, condition: Any, seconds: float = 20, message: str = "") -> Any:
    try:
        return WebDriverWait(
            driver, seconds, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException:
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        raise AssertionError(
            f"{message or condition}; page said: {text_of(driver, 'body')!r}; console errors: {errors}"
        ) from None


# Read through the page's DOM in one step: the views re-render while they refresh, so a WebDriver
# element reference may go stale between finding and reading it.
def click(driver: Any, by: str, value: str, message: str = "") -> None:
    """Click what is found, again if the page swapped its view between finding and clicking."""

    def clicked(d: Any) -> bool:
        d.find_element(by, value).click()
        return True

    wait(driver, clicked, message=message or f"click {value}")


def text_of(driver: Any, selector: str) -> str:
    try:
        return driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector
        )
    except StaleElementReferenceException:  # asked while the page swapped its view: nothing there yet
        return ""


def attribute_of(driver: Any, selector: str, name: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null", selector, name
    )


def screenshot(driver: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"ui-{name}.png"))


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser asked for since the log was last read."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def sign_in(driver: Any, base: str, token: str, subject: str) -> None:
    driver.get(f"{base}/ui")
    field = wait(
        driver,
        lambda d: d.find_element(By.ID, "token") if d.find_element(By.ID, "token").is_displayed() else None,
        message="the sign-in form appears",
    )
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    wait(driver, lambda d: subject in text_of(d, "#who"), message=f"signed in as {subject}")


async def test_an_operator_and_a_reader_use_the_page(chromium: Any, database_url: str, tmp_path: Path) -> None:
    server = await Server(
        database_url,
        tmp_path / "data",
        admin_token=ADMIN_TOKEN,
        # Slow enough that the page sees the copy under way (heartbeats come each second).
        transfer_max_bytes_per_second=6 * MiB,
    ).ready()
    try:
        api = httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        async with api:
            tokens = {}
            for name, role in (("olga", "operator"), ("rita", "reader")):
                response = await api.post("/auth/create_token", params={"name": name, "role": role})
                tokens[name] = response.json()
            registry = Registry(api, tmp_path / "disk")  # type: ignore[arg-type]  # httpx speaks the same
            for name, phase in (("disk", "GAS"), ("archive", "SOLID"), ("scratch", "LIQUID")):
                await registry.storage(name, phase=phase, root=tmp_path / name, storage_capacity=1024 * MiB)
            registry.payload("cube.fits", os.urandom(18 * MiB))
            uid = await registry.register("obs-42/cube.fits", "cube.fits")

            driver = chromium
            requested_urls(driver)  # start the record from here
            sign_in(driver, server.base, tokens["olga"], "olga")

            # Overview: both storages with their fill, the registered item counted.
            wait(
                driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-storage="archive"]'), message="storages shown"
            )
            disk = text_of(driver, '[data-storage="disk"]')
            assert "18.0 MiB of 1.00 GiB" in disk and "1 replicas" in disk, disk
            # The backlog counts items (this one is GAS, its target SOLID); the table counts replicas.
            below = text_of(driver, '[data-backlog="below-target"]')
            assert below.startswith("1 items below their target phase (1 to SOLID)"), below
            assert text_of(driver, '#replicas tr[data-storage-id] td[data-state="READY"]') == "1"

            # Items: search by name, open the item; one replica and its history.
            driver.get(f"{server.base}/ui#/items")
            search = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#item-search input[name=name]"))
            search.send_keys("cube")
            click(driver, By.CSS_SELECTOR, "#item-search button")
            wait(
                driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-uid="{uid}"]'), message="the item is found"
            )
            screenshot(driver, "items")
            click(driver, By.LINK_TEXT, "obs-42/cube.fits")
            wait(driver, lambda d: "Replicas (1)" in d.page_source, message="the item page shows one replica")
            history = driver.execute_script(
                "return [...document.querySelectorAll('#history li')].map((e) => e.dataset.event)"
            )
            assert history[0] == "created", history
            created = text_of(driver, '#history li[data-event="created"]')
            assert "READY" in created and "uri cube.fits" in created and "on disk" in created, created

            # A copy to the archive: its progress bar moves to 100 %.
            migration_id = (await copy(api, uid=uid, destination_name="archive"))["migration_id"]
            driver.get(f"{server.base}/ui#/migrations")
            bar = f'tr[data-migration="{migration_id}"] [role=progressbar]'
            seen: list[int] = []

            def finished(d: Any) -> bool:
                value = attribute_of(d, bar, "aria-valuenow")
                if value is not None and (not seen or seen[-1] != int(value)):
                    seen.append(int(value))
                return 100 in seen

            wait(driver, finished, seconds=60, message="the copy reaches 100 %")
            assert any(0 < value < 100 for value in seen), f"the bar went straight to the end: {seen}"
            assert seen == sorted(seen), f"the bar went backwards: {seen}"
            wait(driver, lambda d: "SUCCEEDED" in text_of(d, f'tr[data-migration="{migration_id}"] .status'))
            screenshot(driver, "copies")
            # Filtered by status and by item, through the page's form.
            driver.execute_script("location.hash = '#/migrations?status=FAILED'")
            wait(driver, lambda d: "No copy matches." in text_of(d, "main"), message="no failed copy")
            driver.execute_script("location.hash = '#/migrations'")
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-migration="{migration_id}"]'))
            form = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#copy-search input[name=item]"))
            form.send_keys("obs-42/cube.fits")
            click(driver, By.CSS_SELECTOR, "#copy-search button")
            wait(driver, lambda d: "item=obs-42" in d.current_url, message="the filter goes into the address")
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-migration="{migration_id}"]'))
            driver.get(f"{server.base}/ui#/")
            wait(driver, lambda d: "1 replicas" in text_of(d, '[data-storage="archive"]'), message="the copy counted")
            wait(
                driver,
                lambda d: text_of(d, '[data-backlog="below-target"]').startswith("0 items"),
                message="the item reached its target phase",
            )
            assert len(driver.find_elements(By.CSS_SELECTOR, "#replicas tr[data-storage-id]")) == 2
            assert attribute_of(driver, "svg.chart rect.column:last-of-type", "data-bytes") == str(18 * MiB)
            screenshot(driver, "overview")

            # The item now has its archive replica, and the history says so.
            driver.get(f"{server.base}/ui#/item?uid={uid}")
            wait(driver, lambda d: "Replicas (2)" in d.page_source, message="the item page shows both replicas")
            assert "archive" in text_of(driver, "table")
            driver.execute_script("window.scrollTo(0, 0)")
            screenshot(driver, "item")

            # The download button hands over the payload the way the browser gets it (size checked by the page).
            size = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch('/request/retrieve?uid=' + arguments[0], {headers: headers()})"
                ".then((r) => r.blob()).then((b) => done(b.size), (e) => done(String(e)));",
                uid,
            )
            assert size == 18 * MiB

            # The API browser renders from DLM's own copy of Swagger UI.
            driver.get(f"{server.base}/schema")
            wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 40, message="/schema renders")
            screenshot(driver, "schema")

            # Nothing so far came from anywhere but DLM.
            elsewhere = [
                url
                for url in requested_urls(driver)
                if urlsplit(url).scheme in ("http", "https") and not url.startswith(server.base + "/")
            ]
            assert elsewhere == [], elsewhere

            # A reader: no cancel button, and cancelling through the page is refused by DLM.
            second = (await copy(api, uid=uid, destination_name="scratch"))["migration_id"]
            driver.get(f"{server.base}/ui#/")
            click(driver, By.ID, "sign-out")
            sign_in(driver, server.base, tokens["rita"], "rita")
            driver.get(f"{server.base}/ui#/migrations")
            wait(driver, lambda d: "needs the operator role" in d.page_source, message="the reader is told")
            assert driver.execute_script("return document.querySelectorAll('button[data-action]:enabled').length") == 0
            driver.execute_script(f"act('Cancel', '/migration/cancel_migration', {second})")
            wait(driver, lambda d: "refused" in text_of(d, "#toast"), message="the page reports the refusal")
            assert "needs role operator" in text_of(driver, "#toast")
            screenshot(driver, "reader-refused")
            response = await api.get("/migration/get_migration", params={"migration_id": second})
            assert response.json()[0]["status"] != "CANCELLED"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_log(chromium: Any) -> None:
    chromium.get_log("performance")


async def test_the_pasted_curl_line_names_the_file_and_runs_nothing_else(
    chromium: Any, database_url: str, tmp_path: Path
) -> None:
    server = await Server(database_url, tmp_path / "data", admin_token=ADMIN_TOKEN).ready()
    try:
        api = httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        async with api:
            registry = Registry(api, tmp_path / "disk")  # type: ignore[arg-type]
            await registry.storage("disk", root=tmp_path / "disk")
            name = "x$(touch${IFS}PWNED)'`touch PWNED2`"
            uid = await registry.register(name, "payload.dat")
        sign_in(chromium, server.base, ADMIN_TOKEN, "admin")
        chromium.get(f"{server.base}/ui#/item?uid={uid}")
        # The command itself, not just the word (the page before the item's may say curl too).
        find_line = (
            "return [...document.querySelectorAll('code')].map((e) => e.innerText).find((t) => t.startsWith('curl'))"
        )
        line = wait(chromium, lambda d: d.execute_script(find_line), message="the item page shows the command")
        pasted = tmp_path / "pasted"
        pasted.mkdir()
        # The operator's shell, with curl standing in as a function that reports its arguments.
        script = f'DLM_TOKEN=t; curl() {{ printf "%s\\n" "$@"; }}\n{line}\n'
        result = subprocess.run(["bash", "-c", script], cwd=pasted, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        arguments = result.stdout.splitlines()
        assert arguments[arguments.index("-o") + 1] == name, arguments
        assert arguments[-1] == f"{server.base}/request/retrieve?oid={uid}", arguments
        assert list(pasted.iterdir()) == [], "the line ran nothing but curl"
    finally:
        server.stop()


BACKLOG = 3000


async def test_storage_deliveries_and_tokens_pages_over_a_backlog_of_thousands(
    chromium: Any, database_url: str, tmp_path: Path
) -> None:
    """Thousands of items below their target phase (no copy worker runs), as an admin sees them: the
    overview's counts, a storage's page, the deliveries and the tokens."""
    server = await Server(database_url, tmp_path / "data", admin_token=ADMIN_TOKEN, migration_workers=0).ready()
    try:
        api = httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
        async with api:
            registry = Registry(api, tmp_path / "disk")  # type: ignore[arg-type]
            await registry.storage("disk", phase="GAS", root=tmp_path / "disk", storage_capacity=1024 * MiB)
            await registry.storage("archive", phase="SOLID", root=tmp_path / "archive")
            (tmp_path / "disk" / "obs").mkdir(parents=True)
            for index in range(BACKLOG):
                (tmp_path / "disk" / "obs" / f"{index:05d}").write_bytes(b"x" * 100)
            entries = [
                {"item_name": f"obs/{i:05d}", "uri": f"obs/{i:05d}", "storage_name": "disk"} for i in range(BACKLOG)
            ]
            registered = await api.post("/ingest/register_data_items", json=entries)
            assert registered.status_code == 200, registered.text
            out = tmp_path / "out"
            delivered = await api.post(
                "/request/deliver",
                json={"items": ["obs/00000", "obs/00001", "obs/00002"], "destination": {"posix": str(out)}},
            )
            assert delivered.status_code == 200, delivered.text

            driver = chromium
            sign_in(driver, server.base, ADMIN_TOKEN, "admin")
            # The overview counts the backlog up to a bound, and every replica from the tallies.
            wait(
                driver,
                lambda d: text_of(d, '[data-backlog="below-target"]').startswith("1,000+ items below their target"),
                message="the backlog is counted",
            )
            assert text_of(driver, '#replicas tr[data-storage-id] td[data-state="READY"]') == str(BACKLOG)
            assert "No copy worker is running, and no copy waits." in text_of(driver, "#sites")

            # A storage's page, from the overview's card: what it holds, day by day, and by state.
            click(driver, By.LINK_TEXT, "disk")
            wait(driver, lambda d: "3,000 replicas" in text_of(d, "#storage-facts"), message="the disk page")
            assert text_of(driver, '#storage-replicas td[data-state="READY"]') == "3,000"
            assert attribute_of(driver, "svg.chart rect.column:last-of-type", "data-bytes") == str(100 * BACKLOG)
            assert "1.00 GiB" in text_of(driver, "#capacity")
            screenshot(driver, "storage")
            # No capacity set: the page says what that means and lets an admin set one.
            driver.execute_script("location.hash = '#/storage?name=archive'")
            field = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#set-capacity input[name=capacity]"))
            assert "none set" in text_of(driver, "#capacity") and "dlm storage update" in text_of(driver, "#capacity")
            field.send_keys("5000000")
            click(driver, By.CSS_SELECTOR, "#set-capacity button")
            wait(driver, lambda d: text_of(d, "#capacity") == "4.77 MiB", message="the capacity is set")
            [archive] = (await api.get("/storage/query_storage", params={"storage_name": "archive"})).json()
            assert archive["storage_capacity"] == 5000000

            # Deliveries: the one above, finished, with its three items.
            driver.execute_script("location.hash = '#/deliveries'")
            row = f'tr[data-delivery="{delivered.json()["delivery_id"]}"]'
            wait(driver, lambda d: "SUCCEEDED" in text_of(d, f"{row} .status"), seconds=60, message="the delivery")
            assert "3" in text_of(driver, f"{row} td.num") and str(out) in text_of(driver, row)
            screenshot(driver, "deliveries")

            # Tokens: a new one's secret shown once and working; revoked, refused.
            driver.execute_script("location.hash = '#/tokens'")
            name = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#create-token input[name=name]"))
            name.send_keys("bot")
            driver.find_element(By.CSS_SELECTOR, "#create-token select[name=role] option[value=reader]").click()
            click(driver, By.CSS_SELECTOR, "#create-token button")
            secret = wait(driver, lambda d: text_of(d, "#new-secret code"), message="the secret is shown")
            assert secret.startswith("dlm_"), secret
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-token="bot"]'), message="bot listed")
            screenshot(driver, "tokens")
            whoami = await api.get("/auth/whoami", headers={"Authorization": f"Bearer {secret}"})
            assert whoami.status_code == 200 and whoami.json()["role"] == "reader", whoami.text
            click(driver, By.CSS_SELECTOR, 'tr[data-token="bot"] button[data-action=revoke]')
            wait(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, 'tr[data-token="bot"]'), message="bot revoked")
            refused = await api.get("/auth/whoami", headers={"Authorization": f"Bearer {secret}"})
            assert refused.status_code == 401

            # A reader has no tokens page to go to.
            reader = (await api.post("/auth/create_token", params={"name": "rita", "role": "reader"})).json()
            click(driver, By.ID, "sign-out")
            sign_in(driver, server.base, reader, "rita")
            assert driver.execute_script("return document.querySelector('nav a[data-page=tokens]').hidden") is True
    finally:
        server.stop()
