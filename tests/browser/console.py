#!/usr/bin/env python3
"""The operator console in a real browser (Chromium through Playwright).

Started by the e2e test `console::a_real_browser_drives_the_console`, which
runs floq (api, worker, scheduler) at CONSOLE_URL and passes, in the
environment:

    CONSOLE_URL            the public URL (the API listens there)
    CONSOLE_ADMIN_EMAIL    an admin with CONSOLE_PASSWORD
    CONSOLE_VIEWER_EMAIL   a viewer with CONSOLE_PASSWORD
    CONSOLE_EDITOR_EMAIL   a flow editor with only a view grant on CONSOLE_VIEWER_FLOW
    CONSOLE_VIEWER_FLOW    a deployed flow the viewer may see
    CONSOLE_VIEWER_RUN     a finished run of it
    CONSOLE_SCREENSHOTS    the directory the screenshots go to

As an operator would: signs in with Email / Password / Sign in; builds a flow
from the "Add node" forms and sees its graph; a validation error shown at its
node; deploys, runs and watches the run succeed, reads a node's output;
pauses and resumes a schedule; deploys a second version and diffs it
against the first and the draft; filters runs by trigger and time and sees a
run appear and finish in the list live (the event stream, no reload);
starts a long run (a delay) and cancels it; creates a credential from the
form its type's schema gives and checks its secret is in no page and no
response body; verifies the audit chain;
creates an API key (shown once). Then signs in as the viewer: no edit,
deploy, run or create controls, and a forbidden page shows the API's own
error message, and so does a save the flow editor's role allows but their
grant on the flow does not. Screenshots of the main pages at 1280 and 390 px wide.

Needs the `playwright` package (PyPI) and a Chromium; FLOQ_CHROMIUM names the
browser binary (default /usr/bin/chromium, Debian's).
"""

import json
import os
import re
import secrets
import sys

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["CONSOLE_URL"].rstrip("/")
ADMIN = os.environ["CONSOLE_ADMIN_EMAIL"]
VIEWER = os.environ["CONSOLE_VIEWER_EMAIL"]
EDITOR = os.environ["CONSOLE_EDITOR_EMAIL"]
PASSWORD = os.environ["CONSOLE_PASSWORD"]
VIEWER_FLOW = os.environ["CONSOLE_VIEWER_FLOW"]
VIEWER_RUN = os.environ["CONSOLE_VIEWER_RUN"]
SHOTS = os.environ["CONSOLE_SCREENSHOTS"]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
T = 20000


def step(msg):
    print(f"- {msg}", flush=True)


def ready(page):
    page.wait_for_selector("body[data-ready='true']", timeout=T)


def goto(page, path):
    page.goto(BASE + path)
    ready(page)


def sign_in(page, email):
    page.goto(BASE + "/login")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(BASE + "/flows", timeout=T)
    ready(page)


def add_node(page, kind, node_id, params, parent=None, port=None):
    page.select_option("#add-type", kind)
    page.fill("#add-id", node_id)
    for name, value in params.items():
        page.fill(f"#param-{kind}-{name}", value)
    if parent is not None:
        page.select_option("#add-parent", parent)
    page.fill("#add-port", port or "")
    page.get_by_role("button", name="Add node", exact=True).click()
    expect(page.locator(f"svg.graph g.node[data-node='{node_id}']")).to_be_visible(timeout=T)


def new_flow(page, name, nodes):
    goto(page, "/flows")
    page.get_by_label("Flow name", exact=True).fill(name)
    for n in nodes:
        add_node(page, *n)
    page.get_by_role("button", name="Create flow", exact=True).click()
    page.wait_for_url(re.compile(BASE + "/flows/" + UUID + "$"), timeout=T)
    ready(page)
    expect(page.locator("main h1")).to_have_text(name)
    return page.url.rsplit("/", 1)[1]


def deploy_and_run(page, run_input):
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("Deployed version 1", timeout=T)
    expect(page.locator("#flow-version")).to_have_text("deployed v1")
    page.fill("#run-input", run_input)
    page.get_by_role("button", name="Run", exact=True).click()
    page.locator("#started-run").click(timeout=T)
    page.wait_for_url(re.compile(BASE + "/runs/" + UUID + "$"), timeout=T)
    ready(page)
    return page.url.rsplit("/", 1)[1]


def main() -> int:
    os.makedirs(SHOTS, exist_ok=True)
    chromium = os.environ.get("FLOQ_CHROMIUM", "/usr/bin/chromium")
    bodies = []  # (url, body) of every response the console received
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        console_errors = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(str(e)))

        def keep(response):
            try:
                bodies.append((response.url, response.body()))
            except Exception:  # redirects have no body
                bodies.append((response.url, b""))

        page.on("response", keep)
        try:
            return walk(page, bodies, console_errors)
        except Exception:
            print(f"failed at {page.url}; alert: {page.locator('#alert').inner_text()!r}; console: {console_errors}")
            page.screenshot(path=os.path.join(SHOTS, "failure.png"), full_page=True)
            print(f"screenshot of the failure: {os.path.join(SHOTS, 'failure.png')}")
            raise


def walk(page, bodies, console_errors) -> int:
    step("sign in with Email, Password, Sign in")
    sign_in(page, ADMIN)
    expect(page.locator("main h1")).to_have_text("Flows")
    expect(page.locator("#account")).to_contain_text(ADMIN)

    step("build a flow from the node forms; the graph shows nodes, edges and the port")
    flow = new_flow(page, "browser-hello", [
        ("set", "greet", {"values": '{"greeting": "hello {{ $input.name }}"}'}),
        ("if", "vip", {"condition": "{{ $input.vip }}"}, "greet"),
        ("set", "gold", {"values": '{"tier": "gold"}'}, "vip", "true"),
    ])
    expect(page.locator("svg.graph g.node")).to_have_count(3)
    expect(page.locator("svg.graph path.edge")).to_have_count(2)
    expect(page.locator("svg.graph text.port")).to_have_text("true")

    step("a validation error is listed and shown at the node it names")
    definition = json.loads(page.input_value("#definition"))
    definition["nodes"][2]["params"] = {}
    page.fill("#definition", json.dumps(definition))
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#alert")).to_contain_text("gold", timeout=T)
    expect(page.locator("#definition-errors li[data-node='gold']")).to_be_visible()
    expect(page.locator("svg.graph g.node.error[data-node='gold']")).to_be_visible()
    goto(page, f"/flows/{flow}")  # the draft is unchanged: the save was refused

    step("webhook enabled (its URL shown once) and a schedule added and removed")
    page.get_by_role("button", name="Enable webhook", exact=True).click()
    expect(page.locator("#webhook-url")).to_have_value(re.compile("^" + re.escape(BASE) + "/hooks/."), timeout=T)
    expect(page.locator("#webhook").get_by_role("button", name="Copy")).to_be_visible()
    hook_url = page.input_value("#webhook-url")
    page.get_by_label("Cron", exact=True).fill("0 * * * *")
    page.get_by_role("button", name="Add schedule", exact=True).click()
    expect(page.locator("#schedules tbody tr")).to_contain_text("0 * * * *", timeout=T)
    expect(page.locator("#schedules .schedule-state")).to_have_text("active")
    expect(page.locator("#schedules ul.fires li")).to_have_count(5)

    step("the schedule paused (no next fires) and resumed (five)")
    page.locator("#schedules").get_by_role("button", name="Pause", exact=True).click()
    expect(page.locator("#schedules .schedule-state")).to_have_text("paused", timeout=T)
    expect(page.locator("#schedules ul.fires li")).to_have_count(0)
    expect(page.locator("#notice")).to_contain_text("Schedule paused")
    page.locator("#schedules").get_by_role("button", name="Resume", exact=True).click()
    expect(page.locator("#schedules .schedule-state")).to_have_text("active", timeout=T)
    expect(page.locator("#schedules ul.fires li")).to_have_count(5)
    page.locator("#schedules").get_by_role("button", name="Remove").click()
    expect(page.locator("#schedules")).to_contain_text("Nothing here yet", timeout=T)
    goto(page, f"/flows/{flow}")
    if hook_url.rsplit("/", 1)[1] in page.content():
        print("the webhook token is shown again")
        return 1

    step("deploy, run, watch it succeed, read a node's output")
    run = deploy_and_run(page, '{"name": "Ada", "vip": true}')
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30000)
    expect(page.locator("main h1")).to_contain_text(run)
    expect(page.locator("#step-greet pre").first).to_contain_text('"greeting": "hello Ada"')
    expect(page.locator("#step-gold pre").first).to_contain_text('"tier": "gold"')
    expect(page.locator("svg.timeline rect.tl-bar")).to_have_count(3)
    expect(page.locator("#retry-run")).to_be_visible()

    step("runs list filtered by the flow")
    goto(page, f"/runs?flow_id={flow}&status=succeeded")
    expect(page.locator(f"#run-list a[href='/runs/{run}']")).to_be_visible()

    step("a second version, and the diff between the two on the flow page")
    goto(page, f"/flows/{flow}")
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    definition = json.loads(page.input_value("#definition"))
    definition["nodes"][2]["params"] = {"values": {"tier": "platinum"}}
    page.fill("#definition", json.dumps(definition))
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("Deployed version 2", timeout=T)
    expect(page.locator("#versions tbody tr")).to_have_count(2, timeout=T)
    expect(page.locator("#diff-from")).to_have_value("1")
    expect(page.locator("#diff-to")).to_have_value("2")
    page.get_by_role("button", name="Compare", exact=True).click()
    diff = page.locator("#version-diff")
    expect(diff).to_contain_text("From v1 to v2", timeout=T)
    expect(diff.locator("tbody tr")).to_have_count(1)
    expect(diff).to_contain_text("node gold: params")
    expect(diff).to_contain_text("platinum")
    page.select_option("#diff-from", "2")
    page.select_option("#diff-to", "draft")
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#diff-none")).to_have_text("No difference.", timeout=T)

    step("runs filtered by trigger and time; the list updates live from the event stream")
    hooked = page.request.post(hook_url, data="{}", headers={"content-type": "application/json"})
    if hooked.status != 202:
        print(f"the webhook answered {hooked.status}")
        return 1
    hooked_run = hooked.json()["run_id"]
    goto(page, f"/runs?flow_id={flow}")
    page.select_option("#runs-trigger", "webhook")
    expect(page.locator("#run-list tbody tr")).to_have_count(1, timeout=T)
    expect(page.locator(f"#run-list a[href='/runs/{hooked_run}']")).to_be_visible()
    page.fill("#runs-from", "2999-01-01T00:00")
    page.dispatch_event("#runs-from", "change")
    expect(page.locator("#run-list")).to_contain_text("Nothing here yet", timeout=T)
    goto(page, f"/runs?flow_id={flow}")
    expect(page.locator("#runs-live")).to_have_text("Live: updates as runs change.", timeout=T)
    page.evaluate("window.__stayed = true")
    started = page.evaluate(
        "id => fetch('/api/v1/flows/' + id + '/runs', {method: 'POST', credentials: 'same-origin',"
        " headers: {'content-type': 'application/json'}, body: '{\"input\": {\"name\": \"Live\"}}'})"
        ".then(r => r.json()).then(b => b.run_id)", flow)
    live_row = page.locator(f"#run-list .run-status[data-run='{started}']")
    expect(live_row).to_have_text("succeeded", timeout=30000)
    if not page.evaluate("window.__stayed === true"):
        print("the runs page reloaded instead of updating in place")
        return 1

    step("a long run (delay) is cancelled from its page")
    new_flow(page, "browser-slow", [("delay", "wait", {"ms": "8000"})])
    deploy_and_run(page, "{}")
    expect(page.locator("#run-status")).to_have_text(re.compile("queued|running"))
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=30000)

    step("a credential: created, its secret in no page and no response body")
    secret = "sk-browser-" + secrets.token_hex(16)
    goto(page, "/credentials")
    expect(page.locator("main h1")).to_have_text("Credentials")
    page.select_option("#credential-type", "http_bearer")
    page.get_by_label("Name", exact=True).fill("browser-token")
    token_input = page.locator("#credential-field-token")
    expect(token_input).to_have_attribute("type", "password")
    token_input.fill(secret)
    page.get_by_role("button", name="Create credential", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("Credential created", timeout=T)
    expect(page.locator("#credential-list")).to_contain_text("browser-token")
    expect(token_input).to_have_value("")
    goto(page, "/credentials")
    if secret in page.content():
        print("the credential's secret is in the page")
        return 1

    step("audit: entries, chain verified, export link")
    goto(page, "/audit")
    expect(page.locator("#audit-list tbody tr").first).to_be_visible()
    page.get_by_role("button", name="Verify chain", exact=True).click()
    expect(page.locator("#audit-verify")).to_contain_text("Chain intact", timeout=T)
    expect(page.locator("#audit-export")).to_have_attribute("href", re.compile("^/api/v1/audit/export"))

    step("admin: an API key shown once with a copy button")
    goto(page, "/admin")
    page.get_by_label("Key name", exact=True).fill("browser-key")
    page.get_by_role("button", name="Create key", exact=True).click()
    expect(page.locator("#new-key-token")).to_have_value(re.compile(r"^ey"), timeout=T)
    expect(page.locator("#key-reveal").get_by_role("button", name="Copy")).to_be_visible()
    expect(page.locator("main")).to_contain_text("operator@acme.test")

    step("screenshots at 1280 and 390 px")
    paths = []
    pages = [("flows", "/flows"), ("flow", f"/flows/{flow}"), ("runs", "/runs"), ("run", f"/runs/{run}"),
             ("credentials", "/credentials"), ("audit", "/audit"), ("admin", "/admin")]
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in pages:
            goto(page, path)
            page.wait_for_timeout(150)
            out = os.path.join(SHOTS, f"{name}-{width}.png")
            page.screenshot(path=out, full_page=True)
            paths.append(out)
            # Readable: nothing wider than the viewport but the tables' and graph's own scrollers.
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            if overflow > 1:
                print(f"{path} at {width} px scrolls sideways by {overflow} px")
                return 1
    page.set_viewport_size({"width": 1280, "height": 900})

    leaked = [url for url, body in bodies if secret.encode() in body]
    if leaked:
        print(f"the credential's secret came back in {leaked}")
        return 1
    step(f"secret absent from all {len(bodies)} response bodies")

    step("sign out")
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(BASE + "/login", timeout=T)

    step("the viewer sees no edit, deploy, run or create controls")
    sign_in(page, VIEWER)
    expect(page.locator(f"#flow-list a[href='/flows/{VIEWER_FLOW}']")).to_be_visible()
    for absent in ("#create-flow", "#add-node-form", "#group-name"):
        expect(page.locator(absent)).to_have_count(0)
    goto(page, f"/flows/{VIEWER_FLOW}")
    expect(page.locator("svg.graph g.node")).to_have_count(1)
    for absent in ("#save-flow", "#deploy-flow", "#run-flow", "#add-node-form", "#webhook", "#schedule-cron"):
        expect(page.locator(absent)).to_have_count(0)
    expect(page.locator("#definition")).to_have_attribute("readonly", "")
    goto(page, f"/runs/{VIEWER_RUN}")
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#cancel-run")).to_have_count(0)
    expect(page.locator("#retry-run")).to_have_count(0)
    goto(page, "/credentials")
    expect(page.locator("#credential-form")).to_have_count(0)

    step("a forbidden page shows the API's own error message")
    page.goto(BASE + "/audit")
    ready(page)
    refusal = page.evaluate(
        "fetch('/api/v1/audit', {credentials: 'same-origin'}).then(r => r.json()).then(b => [b.error.code, b.error.message])")
    if refusal[0] != "forbidden":
        print(f"expected the API to refuse the viewer the audit log, got {refusal}")
        return 1
    expect(page.get_by_role("alert")).to_have_text(refusal[1])
    out = os.path.join(SHOTS, "viewer-audit-forbidden-1280.png")
    page.screenshot(path=out, full_page=True)
    paths.append(out)

    step("a forbidden save (role allows, grant does not) shows the API's own error message")
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(BASE + "/login", timeout=T)
    sign_in(page, EDITOR)
    goto(page, f"/flows/{VIEWER_FLOW}")
    save = page.get_by_role("button", name="Save", exact=True)
    expect(save).to_be_visible()
    save.click()
    refusal = page.evaluate(
        "id => fetch('/api/v1/flows/' + id, {method: 'PUT', credentials: 'same-origin',"
        " headers: {'content-type': 'application/json'}, body: '{}'}).then(r => r.json())"
        ".then(b => [b.error.code, b.error.message])", VIEWER_FLOW)
    if refusal[0] != "forbidden":
        print(f"expected the API to refuse the editor's save, got {refusal}")
        return 1
    expect(page.get_by_role("alert")).to_have_text(refusal[1], timeout=T)
    out = os.path.join(SHOTS, "editor-save-forbidden-1280.png")
    page.screenshot(path=out, full_page=True)
    paths.append(out)

    csp_errors = [e for e in console_errors if "Content Security Policy" in e]
    if csp_errors:
        print(f"the CSP refused something: {csp_errors}")
        return 1
    print("screenshots:")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
