"""docs/app.png, the README's screenshot of the web page, taken by Playwright with Debian's Chromium.

    .venv/bin/python -m personalize.app &                  # the page (default weights: the demo world)
    .venv/bin/python scripts/app_screenshot.py [--url http://127.0.0.1:7860] [--out docs/app.png]

Picks the first demo identity, keeps four of its prompts (the first and the last three), generates
them with the page's default settings and writes a full-page screenshot (256 colours: a small PNG).
"""

import argparse
import shutil

from PIL import Image
from playwright.sync_api import sync_playwright


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--out", default="docs/app.png")
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(600_000)
        page.goto(args.url)
        page.wait_for_selector("#generate")
        page.locator("#demo-identity input").click()
        page.get_by_role("option").first.click()
        page.wait_for_selector("#identity-status :text('photos used')")
        lines = page.input_value("#prompts textarea").splitlines()
        page.fill("#prompts textarea", "\n".join(lines[:1] + lines[-3:] if len(lines) > 4 else lines))
        page.click("#generate")
        page.wait_for_selector("#downloads a[download='images.zip']")
        page.wait_for_timeout(800)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    shot = Image.open(args.out).convert("RGB")
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
