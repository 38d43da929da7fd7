"""Screenshots of the page of a running `clipblip serve --db DB` for the docs (docs/images/page-*.png).

    python tools/page_screenshots.py URL IMAGE [--key KEY_SERVER_URL] [--out docs/images]

URL: a server with a CLIP model, a caption and a VQA model and a search database; IMAGE: a photo to choose
from disk; --key: a second server started with --api-key, for the key prompt. Drives Debian's chromium.
"""

import argparse
import re
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("image")
    parser.add_argument("--key", help="the URL of a server started with --api-key")
    parser.add_argument("--query", default="a red circle")
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(args.url)
        expect(page.locator("#status")).to_contain_text("serving")
        page.locator("input[type=search]").fill(args.query)
        page.locator("input[type=search]").press("Enter")
        expect(page.locator("figure img").first).to_have_attribute("src", re.compile("^blob:"))
        page.wait_for_timeout(500)
        page.screenshot(path=out / "page-search.png")

        page.locator("figure button").first.click()
        expect(page.locator("output#caption")).not_to_have_text(re.compile(r"^(…)?$"), timeout=60_000)
        page.locator("#question").fill("what is in the picture?")
        page.locator("#ask-form button[type=submit]").click()
        expect(page.locator("output#answer")).not_to_have_text(re.compile(r"^(…)?$"), timeout=60_000)
        page.locator("#labels").fill("a red circle, a photo of a woman, a cat")
        page.locator("#labels-form button[type=submit]").click()
        expect(page.locator("#probabilities li")).to_have_count(3)
        page.locator("#look").screenshot(path=out / "page-look.png")

        page.locator("input[type=file]").set_input_files(args.image)
        expect(page.locator("#search-info")).to_contain_text("nearest to the chosen image")
        page.wait_for_timeout(500)
        page.screenshot(path=out / "page-image.png")
        if args.key:
            page.goto(args.key)
            expect(page.locator("#key-form")).to_be_visible()
            page.screenshot(path=out / "page-key.png", clip={"x": 0, "y": 0, "width": 1100, "height": 420})
        browser.close()
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('page-*.png')))} in {out}")


if __name__ == "__main__":
    main()
