"""The page of `clipblip serve` (GET /) driven in headless Chromium through Playwright: search by text, by a
chosen, dropped or pasted image and by a result ("more like this"), shareable URLs, k and re-ranking; one photo's
caption, answer and zero-shot labels as the engines give them; names shown as text; a CSP that stops inline
script; nothing fetched from elsewhere; the API key asked for and carried in a header."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from clipblip.engine import BlipEngine, ClipEngine
from clipblip.search import index_paths, search

httpx = pytest.importorskip("httpx", reason="httpx (the `test` extra) drives the server")
pytest.importorskip("fastapi", reason="the `serve` extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the `test` extra) drives Chromium")

from tests.serve.test_server import Server  # noqa: E402

expect = sync_api.expect
EVIL = "<img src=x onerror=window.pwned=1>.png"
KEY = "page-test-key"


@pytest.fixture(scope="module")
def collection(tmp_path_factory, clip_with_attentions, photos):
    root = tmp_path_factory.mktemp("page-photos")
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (60 + 10 * i, 40), colour).save(root / f"c{i}.png")
    Image.new("RGB", (50, 50), (120, 60, 160)).save(root / EVIL)
    for photo in photos:
        (root / photo.name).write_bytes(photo.read_bytes())
    db = root.parent / "page-photos.db"
    index_paths(db, clip_with_attentions.exported, [root])
    return root, db


@pytest.fixture(scope="module")
def folders(clip_with_attentions, blip_caption, blip_vqa, blip_itm):
    return [f"clip={clip_with_attentions.exported}", f"caption={blip_caption.exported}",
            f"vqa={blip_vqa.exported}", f"itm={blip_itm.exported}"]


@pytest.fixture(scope="module")
def server(folders, collection):
    running = Server(folders, "--db", str(collection[1]))
    yield running
    code, err = running.stop()
    assert code == 0, err[-2000:]


@pytest.fixture(scope="module")
def browser(chromium):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the server; every request it makes is recorded, and any to another origin fails the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.requests, page.errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: (page.errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    yield page
    assert all(url.startswith(server.url) or url.startswith(("blob:", "data:")) for url in page.requests), page.requests
    assert not page.errors, page.errors
    context.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#status")).to_contain_text("serving")


def search_text(page, text: str) -> None:
    box = page.locator("input[type=search]")
    box.fill(text)
    box.press("Enter")
    expect(page.locator("#search-info")).to_contain_text("nearest to")


def names(page) -> list[str]:
    return [page.locator("figure").nth(i).locator("img").get_attribute("alt") for i in range(page.locator("figure").count())]


def test_text_search_shows_the_hits_of_the_library_and_its_url_reloads_them(page, server, collection):
    open_page(page, server.url + "/")
    assert page.locator("#warnings li").count() == 0  # no model here says it has random weights
    search_text(page, "a red square")
    expected = search(collection[1], text="a red square", k=12)
    assert names(page) == [hit.path.rsplit("/", 1)[1] for hit in expected]
    for i, hit in enumerate(expected):
        figure = page.locator("figure").nth(i)
        assert figure.locator("figcaption").text_content().startswith(hit.path.rsplit("/", 1)[1])
        assert f"{hit.score:.3f}" in figure.locator("figcaption").text_content()
    expect(page.locator("figure img").first).to_have_attribute("src", re.compile("^blob:"))  # thumbnail fetched
    assert "q=a+red+square" in page.url
    assert not any(re.search(r"/v1/photos/[0-9a-f]{64}$", url) for url in page.requests)  # no original downloaded

    page.locator("#k").fill("2")
    search_text(page, "a red square")
    assert names(page) == [hit.path.rsplit("/", 1)[1] for hit in expected[:2]] and "k=2" in page.url

    shared = page.url
    page.goto("about:blank")
    open_page(page, shared)
    expect(page.locator("figure")).to_have_count(2)
    assert page.locator("input[type=search]").input_value() == "a red square"


def test_more_like_this_searches_by_the_stored_photo(page, server, collection):
    open_page(page, server.url + "/?q=green&k=3")
    expect(page.locator("figure")).to_have_count(3)
    first = page.locator("figure img").first
    clicked = first.get_attribute("alt")
    first.click()
    expect(page).to_have_url(re.compile(r"like=[0-9a-f]{64}"))
    expect(page.locator("#search-info")).to_contain_text("a photo of the collection")
    expected = search(collection[1], image=collection[0] / clicked, k=3)
    assert names(page) == [hit.path.rsplit("/", 1)[1] for hit in expected]
    assert names(page)[0] == clicked


def test_rerank_orders_by_blip_itm(page, server, collection, blip_itm):
    open_page(page, server.url + "/")
    page.locator("#k").fill("3")
    page.locator("#rerank").check()
    search_text(page, "a box")
    expect(page.locator("#search-info")).to_contain_text("re-ranked")
    expected = search(collection[1], text="a box", k=3, rerank=True, itm_dir=blip_itm.exported)
    assert names(page) == [hit.path.rsplit("/", 1)[1] for hit in expected]
    assert "ITM" in page.locator("figcaption").first.text_content() and "rerank=1" in page.url


def test_a_chosen_dropped_or_pasted_image_is_searched_and_looked_at(page, server, collection, photos,
                                                                   clip_with_attentions, blip_caption):
    caption_engine = BlipEngine.from_dir(blip_caption.exported)
    open_page(page, server.url + "/")
    expected = [hit.path.rsplit("/", 1)[1] for hit in search(collection[1], image=photos[0], k=12)]

    page.locator("input[type=file]").set_input_files(str(photos[0]))
    expect(page.locator("#look-name")).to_have_text(photos[0].name)
    expect(page.locator("#search-info")).to_contain_text("nearest to the chosen image")
    assert names(page) == expected
    expect(page.locator("output#caption")).to_have_text(caption_engine.caption(photos[0], max_new_tokens=20, num_beams=1)[0])

    for event in ("drop", "paste"):
        page.goto("about:blank")
        open_page(page, server.url + "/")
        page.evaluate("""([event, base64, name]) => {
            const blob = new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))]);
            const data = new DataTransfer();
            data.items.add(new File([blob], name, {type: "image/png"}));
            const target = event === "drop" ? document.getElementById("drop") : document;
            const init = event === "drop" ? {dataTransfer: data, bubbles: true} : {clipboardData: data, bubbles: true};
            target.dispatchEvent(event === "drop" ? new DragEvent("drop", init) : new ClipboardEvent("paste", init));
        }""", [event, base64.b64encode((collection[0] / "c1.png").read_bytes()).decode(), "c1.png"])
        expect(page.locator("#look-name")).to_have_text("c1.png")
        expect(page.locator("#search-info")).to_contain_text("nearest to the chosen image")
        assert names(page)[0] == "c1.png"  # the image itself is in the collection


def test_looking_at_a_result_captions_answers_and_labels_as_the_engines_do(page, server, collection,
                                                                          clip_with_attentions, blip_caption, blip_vqa):
    captioner, asker = BlipEngine.from_dir(blip_caption.exported), BlipEngine.from_dir(blip_vqa.exported)
    classifier = ClipEngine.from_dir(clip_with_attentions.exported)
    open_page(page, server.url + "/?q=blue&k=3")
    figure = page.locator("figure").first
    name = figure.locator("img").get_attribute("alt")
    photo = collection[0] / name
    figure.locator("button").click()
    expect(page.locator("#look-name")).to_have_text(name)
    expect(page.locator("output#caption")).to_have_text(captioner.caption(photo, max_new_tokens=20, num_beams=1)[0])
    page.locator("#beams").fill("2")
    page.locator("#max-tokens").fill("6")
    page.locator("#caption-form button[type=submit]").click()
    expect(page.locator("output#caption")).to_have_text(captioner.caption(photo, max_new_tokens=6, num_beams=2)[0])

    page.locator("#question").fill("what colour is it?")
    page.locator("#ask-form button[type=submit]").click()
    expect(page.locator("output#answer")).to_have_text(asker.answer(photo, "what colour is it?")[0])

    page.locator("#labels").fill("a red box, a blue box, a cat")
    page.locator("#labels-form button[type=submit]").click()
    expect(page.locator("#probabilities li")).to_have_count(3)
    ranked = classifier.classify([photo], ["a red box", "a blue box", "a cat"])[0]
    rows = page.locator("#probabilities li")
    for i, (label, probability) in enumerate(ranked):
        assert rows.nth(i).locator(".label").text_content() == label
        assert float(rows.nth(i).locator("progress").get_attribute("value")) == pytest.approx(probability, abs=1e-4)
    expect(page.locator("#scoring")).to_contain_text("Softmax over these labels")  # the page says how it scores
    assert any(re.search(r"/v1/photos/[0-9a-f]{64}$", url) for url in page.requests)  # the original, asked for

    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    pixels = np.asarray(shot)
    assert shot.height > 600 and pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500


def test_names_are_text_and_inline_script_is_forbidden(page, server):
    answer = httpx.get(server.url + "/")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"https?://", answer.text) and "<script>" not in answer.text  # no inline, nothing remote

    open_page(page, server.url + "/")
    search_text(page, "purple")
    figure = page.locator("figure", has=page.locator(f"img[alt='{EVIL}']"))
    expect(figure.locator("figcaption")).to_contain_text(EVIL)
    assert figure.locator("figcaption").text_content().startswith(EVIL)
    assert page.locator("img").count() == page.locator("figure").count() + 1  # results' and the look image's only
    assert page.evaluate("window.pwned") is None

    violations = page.evaluate("""() => new Promise((resolve) => {
        document.addEventListener("securitypolicyviolation", (e) => resolve(e.violatedDirective));
        const script = document.createElement("script");
        script.textContent = "window.inlineRan = true";
        document.body.append(script);
        setTimeout(() => resolve(null), 2000);
    })""")
    assert violations == "script-src-elem" and page.evaluate("window.inlineRan") is None


def test_with_a_key_the_page_asks_for_it_and_nothing_is_reachable_without_it(browser, folders, collection,
                                                                            int8_folders):
    server = Server([*folders, f"random={int8_folders['clip']}"], "--db", str(collection[1]), "--api-key", KEY)
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        expect(page.locator("#key-form")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("API key")
        page.locator("#key").fill("wrong")
        page.locator("#key-form button").click()
        expect(page.locator("#status")).to_contain_text("refused")
        page.locator("#key").fill(KEY)
        page.locator("#key-form button").click()
        expect(page.locator("#status")).to_contain_text("serving")
        expect(page.locator("#warnings")).to_have_text("RANDOM weights: random. What this model says shows the "
                                                       "plumbing, not meaning.")
        search_text(page, "a red square")
        expect(page.locator("figure img").first).to_have_attribute("src", re.compile("^blob:"))
        page.close()

        hit = httpx.post(server.url + "/v1/search", json={"text": "a red square"},
                         headers={"Authorization": f"Bearer {KEY}"}).json()["hits"][0]
        for method, route in [("GET", f"/v1/photos/{hit['id']}/thumbnail"), ("GET", f"/v1/photos/{hit['id']}"),
                              ("GET", "/v1/database"), ("GET", "/v1/models"), ("POST", "/v1/search")]:
            answer = httpx.request(method, server.url + route, json={"text": "a"} if method == "POST" else None)
            assert answer.status_code == 401, (route, answer.text)
        assert httpx.get(server.url + "/").status_code == 200 and httpx.get(server.url + "/page/page.js").status_code == 200
    finally:
        code, err = server.stop()
    assert code == 0, err[-2000:]
