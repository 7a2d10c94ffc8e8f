"""The web dashboard (/dashboard) in headless Chromium, driven by selenium through Debian's chromium and
chromedriver: a real `router-ml serve` process answers real replay traffic sent with the openai SDK (tenant acme's
routed calls shadow-judged by the replay judge, which grades by the recorded outcomes), and every figure the page
shows must equal the analytics API's number (fetched here independently) in the page's own formatting. A
screenshot goes to pytest's tmp_path, or to benchmarks/results/dashboard.png when ROUTER_ML_SCREENSHOT is set (a
CI checkout stays clean)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal

import httpx
import openai
import pytest

from router_ml.config import PROJECT_ROOT
from router_ml.serve.tenancy.tenants import TenantStore
from servers import copy_served, free_port, served, start_server  # noqa: F401 (served: a fixture)

ADMIN_KEY = "rm-admin-dashboard-test"
HEADLINE = ("saved", "saved-fraction", "routing-saved", "cache-saved", "spend", "reference", "forecast-30d",
            "forecast-30d-lo", "forecast-30d-hi", "forecast-7d", "requests", "tokens", "error-rate", "errors",
            "cache-hit-rate", "cache-hits", "latency-p50", "latency-p95", "latency-p99", "judging")
QUALITY = ("quality-kept", "quality-lower", "quality-upper", "judged-calls")
REFERENCE = "gpt-4-1106-preview"
ABANDONED = ["Write a detailed essay on the history of tea in China, Japan and Britain.",
             "Explain, step by step and at length, how a compiler turns source code into machine code."]


def _chromium() -> tuple[str, str]:
    """(chromium, chromedriver) of the Debian packages; skip without them, except in CI, where that is a failure."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser = None
    if not browser or not driver:
        message = ("no headless browser: needs Debian's chromium and chromium-driver (`.ci/services` installs them) "
                   "and the selenium package (pip install -e '.[test]')")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver


# ---- the page's number formatting, restated (dashboard.js: FORMATS); JS toFixed rounds half away from zero ----

def _fixed(x: float, decimals: int) -> str:
    q = Decimal(abs(x)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    whole, _, frac = format(q, "f").partition(".")
    return ("-" if x < 0 and q != 0 else "") + f"{int(whole):,}" + ("." + frac if frac else "")


def _usd(v: float) -> str:
    a, d = abs(v), 2
    if 0 < a < 1:
        d, t = 4, 0.01
        while a < t and d < 8:
            d, t = d + 1, t / 10
    body = _fixed(a, d)
    return ("-$" if v < 0 and Decimal(body.replace(",", "")) != 0 else "$") + body


FORMATS = {"usd": _usd, "pct": lambda v: _fixed(v * 100, 1) + "%", "int": lambda v: _fixed(v, 0),
           "ms": lambda v: _fixed(v / 1000, 2) + " s" if abs(v) >= 1000 else _fixed(v, 0) + " ms", "text": str}


def shown(v, kind: str) -> str:
    return "—" if v is None else FORMATS[kind](v)


def test_money_format_matches_the_pages_rules():
    assert [_usd(v) for v in (0, 0.0123, 0.00123, 0.000012345, 1234.5, -0.5, 0.125)] == [
        "$0.00", "$0.0123", "$0.00123", "$0.0000123", "$1,234.50", "-$0.5000", "$0.1250"]
    assert FORMATS["pct"](0.0625) == "6.3%" and FORMATS["ms"](2100.0) == "2.10 s" and FORMATS["ms"](812.4) == "812 ms"


def test_the_page_and_its_files_are_served_with_nothing_from_elsewhere():
    """No build step and no CDN: three committed files, each with its content type, revalidated on every load."""
    from importlib import resources

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from router_ml.serve.api import dashboard as api_dashboard

    app = FastAPI()
    app.include_router(api_dashboard.router)
    client = TestClient(app)
    for path, kind in (("/dashboard", "text/html"), ("/dashboard/dashboard.js", "text/javascript"),
                       ("/dashboard/dashboard.css", "text/css")):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
        assert response.headers["cache-control"] == "no-cache"
        assert "connect-src 'self'" in response.headers["content-security-policy"]
        outside = re.findall(r"https?://[^\s\"')]+", response.text)
        assert outside == (["http://www.w3.org/2000/svg"] if path.endswith(".js") else []), outside
    assert client.get("/dashboard/../dashboard.py").status_code == 404
    assert client.get("/dashboard/secret.txt").status_code == 404
    shipped = resources.files("router_ml.serve").joinpath("static")
    assert {p.name for p in shipped.iterdir()} >= set(api_dashboard.ASSETS)


# ---- fixtures ----

@pytest.fixture(scope="module")
def gateway(served, static_encoder_dir, tmp_path_factory):  # noqa: F811
    """A gateway process (replay provider at half the recorded pace, exact cache) with tenants 'acme' and 'beta'."""
    tmp = tmp_path_factory.mktemp("dashboard")
    recorded = copy_served(served, tmp)
    url = f"sqlite:///{tmp / 'calls.db'}"
    tenants = TenantStore(url)
    keys = {}
    for name, reference in (("acme", REFERENCE), ("beta", None)):  # only a tenant with a reference is judged
        tenants.create_tenant(name, reference_model=reference)
        keys[name] = tenants.issue_key(name)
    port = free_port()
    process, _ = start_server(tmp, static_encoder_dir, port, key=keys["acme"],
                        env_extra={"ROUTER_ML_ADMIN_KEY": ADMIN_KEY, "ROUTER_ML_REPLAY_SPEED": "0.5",
                                   "ROUTER_ML_CACHE": "exact", "ROUTER_ML_JUDGE_MODEL": "replay-judge",
                                   "ROUTER_ML_SHADOW_RATE": "1"})
    base = f"http://127.0.0.1:{port}"
    yield {"base": base, "keys": keys, "tenants": tenants, "prompts": recorded["prompt"].unique(maintain_order=True)}
    tenants.close()
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
                 "--window-size=1440,1000", "--lang=en-US"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="router-ml-chromium-") as user_data, \
            pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # selenium manager must never try to download a browser or driver
        options.add_argument(f"--user-data-dir={user_data}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        try:
            yield driver
        finally:
            driver.quit()


# ---- helpers ----

def _send(base: str, key: str, prompts: list[str]) -> None:
    """Routed chat calls (router-ml/auto) through the official openai SDK, eight at a time."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)

    def one(prompt: str) -> None:
        client.chat.completions.create(model="router-ml/auto", messages=[{"role": "user", "content": prompt}])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, prompts))


def _abandon(base: str, key: str, prompt: str) -> None:
    """A streamed call whose client leaves after the first chunk: the gateway logs it as an error (499)."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
    stream = client.chat.completions.create(model="router-ml/auto", stream=True,
                                            messages=[{"role": "user", "content": prompt}])
    for _ in stream:
        break
    stream.close()


def _api(base: str, key: str, path: str) -> dict:
    response = httpx.get(f"{base}/{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


READ_FIGURES = """
return {updates: Number(document.body.dataset.updates || 0), usage: document.body.dataset.usageQuery,
        forecast: document.body.dataset.forecastQuery, quality: document.body.dataset.qualityQuery,
        figures: Array.from(document.querySelectorAll('#board [data-path]')).map(el => ({
          path: el.dataset.path, kind: el.dataset.format, value: el.dataset.value, text: el.textContent,
          metric: el.dataset.metric || null, visible: el.getClientRects().length > 0}))};
"""


def _updates(driver) -> int:
    return driver.execute_script("return Number(document.body.dataset.updates || 0)")


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _resolve(data: dict, path: str):
    source, *parts = path.split("/")
    value = data[source]
    for part in parts:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _judging_done(base: str, key: str, browser) -> dict:
    """The quality report once shadow judging (after the answers, off the hot path) stopped adding rows, and the
    page refreshed twice since: the page and the API then read the same call log."""
    def snapshot():
        usage = _api(base, key, "v1/analytics/usage")["totals"]
        return usage["spend_usd"], usage["judging_usd"], _api(base, key, "v1/analytics/quality")["judged_calls"]

    last = snapshot()
    deadline = time.time() + 60
    while True:
        time.sleep(1.5)
        now = snapshot()
        if now == last:
            break
        if time.time() > deadline:
            pytest.fail(f"shadow judging still adding rows after 60 s: {now}")
        last = now
    seen = _updates(browser)
    _wait(lambda: _updates(browser) >= seen + 2, 15, "two refreshes after judging")
    return _api(base, key, "v1/analytics/quality")


def _unclocked(warning: str) -> str:
    return re.sub(r"projected \$[\d,.]+", "projected $…", warning)


def _check_against_api(driver, base: str, key: str) -> dict:
    """Every figure on the page equals the API's number (data-value) and shows it in the page's format; returns
    the page's figures by metric name and the API's answers."""
    page = driver.execute_script(READ_FIGURES)
    assert page["updates"] >= 1 and page["usage"] and page["forecast"]
    data = {"usage": _api(base, key, page["usage"]), "forecast": _api(base, key, page["forecast"]),
            "quality": _api(base, key, page["quality"]) if page["quality"] else None}
    assert page["figures"], "no figures on the page"
    for figure in page["figures"]:
        if data["quality"] is None and figure["path"].startswith("quality/"):  # the page shows it unknown
            assert (figure["value"], figure["text"]) == ("", "—"), figure
            continue
        expected = _resolve(data, figure["path"])
        if figure["metric"] == "warning":  # its projection moves with the clock, like projected_usd below
            assert _unclocked(figure["text"]) == _unclocked(expected) and figure["value"] == figure["text"], figure
            continue
        if expected is None or isinstance(expected, str):
            assert figure["value"] == ("" if expected is None else expected), figure
            assert figure["text"] == shown(expected, figure["kind"]), figure
            continue
        value = float(figure["value"])
        value = int(value) if isinstance(expected, int) else value
        assert figure["text"] == shown(value, figure["kind"]), figure
        if figure["path"].endswith("/projected_usd"):  # spent + the rest of today's forecast: moves with the clock
            assert value == pytest.approx(expected, rel=1e-3), figure
        else:
            assert value == expected, figure
    by_metric = {f["metric"]: f for f in page["figures"] if f["metric"]}
    missing = [m for m in HEADLINE if m not in by_metric]
    assert not missing, f"figures missing from the page: {missing}"
    assert all(by_metric[m]["visible"] for m in HEADLINE)
    shown_paths = {f["path"] for f in page["figures"]}
    for i, model in enumerate(data["usage"]["models"]):
        assert f"usage/models/{i}/share" in shown_paths and f"usage/models/{i}/requests" in shown_paths, model
    for i in range(min(10, len(data["usage"]["tenants"]))):
        assert f"usage/tenants/{i}/spend_usd" in shown_paths
    for i in range(len(data["usage"]["recent_errors"])):
        assert f"usage/recent_errors/{i}/error" in shown_paths
    warnings = [_unclocked(f["text"]) for f in page["figures"] if f["metric"] == "warning"]
    assert warnings == [_unclocked(w) for w in data["forecast"]["warnings"]]
    return {"figures": by_metric, **data}


def _screenshot(driver, tmp_path) -> str:
    """The whole page (beyond the window) as a PNG."""
    import base64

    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": 1440, "height": height,
                                                                "scale": 1}})
    wanted = os.environ.get("ROUTER_ML_SCREENSHOT")
    path = (PROJECT_ROOT / "benchmarks" / "results" / "dashboard.png") if wanted else tmp_path / "dashboard.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"\ndashboard screenshot: {path}")
    return str(path)


# ---- tests ----

def test_dashboard_shows_the_apis_figures_and_refreshes(gateway, browser, tmp_path):
    base, keys, prompts = gateway["base"], gateway["keys"], gateway["prompts"]
    started = time.time()
    first = prompts[:30].to_list()
    _send(base, keys["acme"], first + first[:8])  # the repeated eight come from the response cache
    _send(base, keys["beta"], prompts[30:40].to_list())
    for prompt in ABANDONED:
        _abandon(base, keys["acme"], prompt)
    # A monthly budget that the forecast says runs out before the month ends (unless the month ends today).
    spent = _api(base, keys["acme"], "v1/analytics/usage")["totals"]["spend_usd"]
    gateway["tenants"].update_tenant("acme", budget_usd_month=round(spent * 2 + 1e-4, 6))

    page = f"{base}/dashboard"
    assert httpx.get(page).headers["content-type"].startswith("text/html")
    browser.get(f"{page}#key={keys['acme']}&refresh=1")
    _wait(lambda: _updates(browser) >= 1, 20, "the first refresh")
    assert "key=" not in browser.current_url  # the key is taken out of the address bar...
    assert browser.execute_script("return sessionStorage.getItem('router-ml.dashboard.key')") == keys["acme"]
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not problems, problems  # no script error, nothing refused by the page's content security policy

    def budget_known():  # ...and the tenant store's cache (5 s) lets the new budget through
        return _api(base, keys["acme"], "v1/analytics/forecast")["budgets"]

    _wait(budget_known, 10, "the budget in the forecast")
    _wait(lambda: browser.execute_script("return document.querySelectorAll('[data-path^=\"forecast/budgets/\"]')"
                                         ".length") > 0, 10, "the budget on the page")
    quality = _judging_done(base, keys["acme"], browser)
    seen = _check_against_api(browser, base, keys["acme"])
    # Every routed call another model answered was judged against the reference (rate 1), and the page says so.
    assert quality["judged_calls"] > 0 and seen["usage"]["totals"]["judging_usd"] > 0
    assert 0 <= quality["judged_away"]["lower"] <= quality["judged_away"]["share"]
    assert all(seen["figures"][m]["visible"] for m in QUALITY)
    kept = browser.find_element("id", "quality").text
    assert f"on {quality['judged_calls']} judged calls" in kept and REFERENCE in kept, kept
    totals = seen["usage"]["totals"]
    assert totals["requests"] == 40 and totals["cache_hits"] >= 8 and totals["errors"] >= 1
    assert seen["usage"]["scope"]["tenant"] == "acme" and len(seen["usage"]["tenants"]) == 1
    assert seen["figures"]["saved"]["text"].startswith("$") and totals["saved_usd"] > 0
    if any(b["runs_out"] for b in seen["forecast"]["budgets"]):
        banners = browser.execute_script("return Array.from(document.querySelectorAll('.warning')).map(e => "
                                         "e.textContent.trim())")
        assert banners and all("budget" in b for b in banners)

    # Auto-refresh: new traffic shows up without a reload.
    before = _updates(browser)
    _send(base, keys["acme"], prompts[40:52].to_list())
    want = _api(base, keys["acme"], "v1/analytics/usage")["totals"]["requests"]
    assert want == totals["requests"] + 12
    _wait(lambda: browser.execute_script("return document.querySelector('[data-metric=requests]').dataset.value")
          == str(want), 15, f"the page to show {want} requests")
    assert _updates(browser) > before
    _judging_done(base, keys["acme"], browser)
    seen = _check_against_api(browser, base, keys["acme"])
    _screenshot(browser, tmp_path)
    print(f"dashboard test: {time.time() - started:.1f} s")


def test_bad_key_asks_again_and_admin_sees_every_tenant(gateway, browser):
    base = gateway["base"]
    browser.get("about:blank")  # a new document: a change of the fragment alone would not reload the page
    browser.get(f"{base}/dashboard#key=rm-not-a-key")
    _wait(lambda: browser.execute_script("return !document.getElementById('login').hidden"), 15, "the key form")
    assert "Invalid key" in browser.find_element("id", "login-error").text
    assert browser.execute_script("return sessionStorage.getItem('router-ml.dashboard.key')") is None

    field = browser.find_element("id", "key-input")  # the form: the admin key shows every tenant
    field.send_keys(ADMIN_KEY)
    browser.find_element("css selector", "#login-form button[type=submit]").click()
    _wait(lambda: _updates(browser) >= 1, 20, "the first refresh with the admin key")
    _wait(lambda: {"acme", "beta"} <= set(browser.execute_script(
        "return Array.from(document.querySelectorAll('#tenant-select option')).map(o => o.value)")), 10,
        "both tenants in the tenant selector")
    seen = _check_against_api(browser, base, ADMIN_KEY)
    assert seen["usage"]["scope"]["admin"] and {t["tenant"] for t in seen["usage"]["tenants"]} >= {"acme", "beta"}
    browser.execute_script("const s = document.getElementById('tenant-select'); s.value = 'beta';"
                           "s.dispatchEvent(new Event('change'));")
    _wait(lambda: (browser.execute_script("return document.body.dataset.usageQuery") or "").endswith("tenant=beta"),
          10, "the page to narrow to tenant beta")
    seen = _check_against_api(browser, base, ADMIN_KEY)
    assert [t["tenant"] for t in seen["usage"]["tenants"]] == ["beta"]
