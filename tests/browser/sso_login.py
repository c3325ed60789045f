#!/usr/bin/env python3
"""Single sign-on in a real browser (Chromium through Playwright).

Started by the e2e test `sso::a_real_browser_signs_in_and_lands_signed_in`,
which runs floq and the mock identity provider and passes:

    sso_login.py START_URL EXPECTED_EMAIL

The provider answers on `localhost`, floq on `127.0.0.1`: two sites, so the
provider's redirect back to the callback is a cross-site navigation, as with
a real provider. The provider shows a page with a "Continue" link, so the
navigation back starts on the provider's site (a navigation the browser
itself starts, like `page.goto`, would count as same-site all the way). The
script follows the whole flow as a user would and checks
that the page it lands on (`return_to` = `/api/v1/auth/me`, which answers only
with a session) was loaded signed in: the `SameSite=Strict` session cookie
was sent on the navigation after the callback.

Needs the `playwright` package (PyPI) and a Chromium; FLOQ_CHROMIUM names the
browser binary (default /usr/bin/chromium, Debian's).
"""

import json
import os
import sys

from playwright.sync_api import sync_playwright


def main() -> int:
    start_url, expected_email = sys.argv[1], sys.argv[2]
    chromium = os.environ.get("FLOQ_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context()
        page = context.new_page()
        visited = []
        page.on("framenavigated", lambda f: visited.append(f.url) if f == page.main_frame else None)
        page.goto(start_url)
        # The provider's sign-in page (on another site): the user continues from there.
        page.wait_for_selector("#continue", timeout=15000)
        if not page.url.startswith("http://localhost:"):
            print(f"expected the provider's page on localhost, got {page.url}")
            return 1
        page.click("#continue")
        page.wait_for_url("**/api/v1/auth/me", timeout=15000)
        page.wait_for_load_state("load")
        text = page.inner_text("body")
        try:
            me = json.loads(text)
        except ValueError:
            print(f"landed on a page that is not /me's JSON: {text[:500]!r}; visited {visited}")
            return 1
        email = me.get("user", {}).get("email")
        if email != expected_email:
            print(f"landed on /api/v1/auth/me without the expected session: {me}; visited {visited}")
            return 1
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies.get("floq_session")
        if not session or session.get("sameSite") != "Strict" or not session.get("httpOnly"):
            print(f"the session cookie is not HttpOnly SameSite=Strict: {session}")
            return 1
        if cookies.get("floq_sso", {}).get("value"):
            print("the browser-binding cookie outlived the sign-in")
            return 1
        print(f"signed in as {email}; visited {visited}")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
