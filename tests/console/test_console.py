"""The web console in a real browser (Debian's chromium through Playwright) against a real
cluster: sign in, submit a job from the page and watch it succeed without a reload, its log,
a dataset upload, a workflow graph, usage, the admin's pages, a key revoked by the admin
refused on the tenant's page; axe-core finds no serious accessibility violation on any page.
Each page's screenshot is saved in docs/img for the README."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, FilePayload, Page, expect

from tests.conftest import ADMIN_KEY
from tests.console.conftest import SCREENSHOTS
from tools.cluster import LocalCluster

# the package's cluster starts within the first test (a cold numba cache compiles kernels)
pytestmark = pytest.mark.timeout(600)

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
WAIT_MS = 60_000


async def new_tenant(api: httpx.AsyncClient, name: str) -> tuple[str, str]:
    r = await api.post("/v1/tenants", json={"name": f"{name}-{time.time_ns()}"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    tid: str = r.json()["id"]
    k = await api.post(f"/v1/tenants/{tid}/keys", json={"name": "console"}, headers=ADMIN)
    assert k.status_code == 201, k.text
    return tid, k.json()["key"]


async def context(browser: Browser) -> BrowserContext:
    # bypass_csp: axe is added to the page as a script of the test's (the page's own policy
    # allows only the gateway's scripts)
    ctx = await browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    ctx.set_default_timeout(WAIT_MS)
    return ctx


async def sign_in(page: Page, base: str, key: str) -> None:
    await page.goto(f"{base}/console")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signout")).to_be_visible()


async def serious_violations(page: Page) -> list[dict[str, Any]]:
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]


async def shoot(page: Page, name: str, checked: dict[str, list[dict[str, Any]]]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)
    checked[name] = await serious_violations(page)


async def test_console_in_a_browser(
    console_cluster: LocalCluster, api: httpx.AsyncClient, browser: Browser
) -> None:
    base = console_cluster.url("gateway")
    tid, key = await new_tenant(api, "console")
    axe: dict[str, list[dict[str, Any]]] = {}

    tenant_ctx = await context(browser)
    page = await tenant_ctx.new_page()
    await page.goto(f"{base}/console")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await shoot(page, "signin", axe)
    # the key is kept in session storage: never in the URL, nor in a cookie
    await sign_in(page, base, key)
    assert key not in page.url
    assert await tenant_ctx.cookies() == []
    await expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    await expect(page.locator(".live")).to_have_text("● live")

    # submit from the page; the job page follows it to SUCCEEDED without a reload
    await page.get_by_text("Submit a job").click()
    await page.locator("#submit-kernel").select_option("montecarlo_pi")
    await page.locator("#submit-params").fill('{"samples": 200000, "seed": 7}')
    await page.locator("#submit-button").click()
    await page.wait_for_url(re.compile(r"#/jobs/.+"))
    job_id = page.url.split("#/jobs/")[1]
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await expect(page.locator(".panel .state").first).to_have_text("SUCCEEDED")
    assert navigations == [], f"the page was reloaded: {navigations}"
    # its log, followed on the page, and its receipt
    await expect(page.locator("#job-log")).to_contain_text("SUCCEEDED")
    await expect(page.get_by_role("heading", name="Receipt")).to_be_visible()
    await expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    r = await api.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert r.json()["state"] == "SUCCEEDED"
    await shoot(page, "job", axe)

    # the jobs table shows it SUCCEEDED, and a job submitted meanwhile appears live
    await page.get_by_role("link", name="Jobs").click()
    await expect(page.locator(f'tr[data-id="{job_id}"] .state')).to_have_text("SUCCEEDED")
    await expect(page.locator(".live")).to_have_text("● live")
    r = await api.post(
        "/v1/jobs",
        json={
            "kernel": "montecarlo_pi",
            "params": {"samples": 1000, "seed": 1},
            "labels": {"by": "api"},
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 201, r.text
    await expect(page.locator(f'tr[data-id="{r.json()["id"]}"] .state')).to_have_text("SUCCEEDED")
    await shoot(page, "jobs", axe)

    # upload a dataset with progress; it is listed, and its page names no producing job
    await page.get_by_role("link", name="Datasets").click()
    payload = bytes(range(256)) * 4096  # 1 MiB
    await page.locator("#upload-file").set_input_files(
        files=FilePayload(name="plate.bin", mimeType="application/octet-stream", buffer=payload)
    )
    await page.locator("#upload-name").fill("experiments/plate.bin")
    await page.get_by_role("button", name="Upload").click()
    await expect(page.locator("#upload-status")).to_contain_text("uploaded experiments/plate.bin")
    assert await page.locator("#upload-progress").evaluate("p => p.value") == 1
    await expect(page.get_by_role("link", name="experiments/plate.bin")).to_be_visible()
    got = await api.get(
        "/v1/datasets/experiments/plate.bin", headers={"Authorization": f"Bearer {key}"}
    )
    assert got.content == payload
    await page.get_by_role("link", name="experiments/plate.bin").click()
    await expect(page.get_by_text("uploaded (no producing job)")).to_be_visible()
    # the download hands the browser the same bytes
    async with page.expect_download() as download_info:
        await page.locator("section.panel").get_by_role("button", name="Download").click()
    download = await download_info.value
    assert download.suggested_filename == "plate.bin"
    saved = await download.path()
    assert Path(saved).read_bytes() == payload
    await shoot(page, "datasets", axe)

    # an array: its counts as a bar, its elements, followed live to SUCCEEDED
    arr = await api.post(
        "/v1/jobs",
        json={
            "kernel": "montecarlo_pi",
            "params": {"samples": 1000},
            "array": {"size": 4, "index_param": "seed"},
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert arr.status_code == 201, arr.text
    await page.goto(f"{base}/console#/jobs/{arr.json()['id']}")
    await expect(page.get_by_role("heading", name="Array of 4")).to_be_visible()
    await expect(page.locator(".panel .state").first).to_have_text("SUCCEEDED")
    await expect(page.locator(".bar").first).to_have_attribute("aria-label", "counts: SUCCEEDED 4")
    # the elements' rows (their ids are "{array_id}:{index}")
    await expect(page.locator("tr[data-id*=':'] .state-SUCCEEDED")).to_have_count(4)
    await shoot(page, "array", axe)

    # a workflow as a graph
    wf = await api.post(
        "/v1/workflows",
        json={
            "name": "console-study",
            "steps": {
                "a": {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}},
                "b": {
                    "kernel": "montecarlo_pi",
                    "params": {"samples": 1000, "seed": 2},
                    "depends_on": [{"step": "a", "condition": "afterok"}],
                },
            },
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert wf.status_code == 201, wf.text
    await page.goto(f"{base}/console#/workflows/{wf.json()['id']}")
    await expect(page.locator("svg .node")).to_have_count(2)
    await expect(page.locator("svg .edge")).to_have_count(1)
    await expect(page.locator("svg .node").last).to_contain_text("SUCCEEDED")
    await shoot(page, "workflow", axe)

    await page.get_by_role("link", name="Usage").click()
    await expect(page.get_by_text("max_running_jobs").first).to_be_visible()
    await shoot(page, "usage", axe)

    # the admin: tenants, a key made and revoked from the page; pools; dead letters
    admin_ctx = await context(browser)
    admin = await admin_ctx.new_page()
    await sign_in(admin, base, ADMIN_KEY)
    await expect(admin.get_by_role("heading", name="Tenants and keys")).to_be_visible()
    row = admin.locator("tr", has_text=tid)
    # the tenant's existing keys, read from the API: the one made before the page opened
    first = (await api.get(f"/v1/tenants/{tid}/keys", headers=ADMIN)).json()["items"][0]
    await row.get_by_label("Keys of").click()
    await expect(row.locator(f"li[data-key='{first['id']}']")).to_contain_text(first["prefix"])
    await row.get_by_role("button", name="Create key for").click()
    second_key = (await admin.locator("#new-key").text_content() or "").strip()
    assert second_key
    listed = (await api.get(f"/v1/tenants/{tid}/keys", headers=ADMIN)).json()["items"]
    second = next(k for k in listed if k["id"] != first["id"])
    row = admin.locator("tr", has_text=tid)
    # both keys shown (the list stays open), each with its Revoke button, never a secret
    await expect(row.locator("li[data-key]")).to_have_count(2)
    revoke_second = row.get_by_role("button", name=f"Revoke key console ({second['prefix']}")
    await expect(revoke_second).to_be_visible()
    assert second_key not in (await row.inner_text())
    # the screenshot shows the key's prefix only
    await admin.locator("#new-key").evaluate(
        "e => e.textContent = e.textContent.slice(0, 10) + '…'"
    )
    await shoot(admin, "tenants", axe)

    other_ctx = await context(browser)
    other = await other_ctx.new_page()
    await sign_in(other, base, second_key)
    await expect(other.get_by_role("heading", name="Jobs")).to_be_visible()

    await revoke_second.click()
    await expect(admin.locator("#revoked")).to_contain_text("revoked")
    # the list shows it revoked, the first key still active
    row = admin.locator("tr", has_text=tid)
    await expect(row.locator(f"li[data-key='{second['id']}']")).to_contain_text("revoked")
    await expect(
        row.locator(f"li[data-key='{first['id']}']").get_by_role("button", name="Revoke")
    ).to_be_visible()
    # the tenant's page refuses the revoked key: back to sign-in, saying why
    await other.get_by_role("link", name="Usage").click()
    await expect(other.locator("#banner")).to_contain_text("refused")
    await expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
    # the first key still works
    await page.get_by_role("link", name="Jobs").click()
    await expect(page.get_by_role("heading", name="Jobs")).to_be_visible()

    await admin.get_by_role("link", name="Pools").click()
    await expect(admin.get_by_role("heading", name="Pool cpu")).to_be_visible()
    await shoot(admin, "pools", axe)
    await admin.get_by_role("link", name="Dead letters").click()
    await expect(admin.get_by_role("columnheader", name="Queue")).to_be_visible()
    await shoot(admin, "dead-letters", axe)

    for ctx in (tenant_ctx, admin_ctx, other_ctx):
        await ctx.close()
    serious = {k: v for k, v in axe.items() if v}
    assert serious == {}, f"serious accessibility violations: {serious}"
