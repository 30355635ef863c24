"""The web page at `/` in a real headless Chromium, against the real local stack: the endpoint process
with the default model and `chalice local`, behind a loopback stand-in for API Gateway that records what
the browser sends and can require an API key as the prod stage does."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import DEFAULT_MODEL, PROJECT, ChaliceLocal, async_stage, browser_paths
from gateway import Gateway, serving_gateway
from local_servers import free_port
from pictures import as_a_phone_stores_it
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from chalicelib.settings import MAX_UPLOAD_BYTES, RETRY_AFTER_S

# Wait this long for the page to answer; the model itself takes well under a second here.
ANSWER_TIMEOUT_S = 60
# README's picture of the page, written by the test of a chosen photo; the PNG text entry that says which
# answer it shows; the facts left out of that, which change every run.
PAGE_PICTURE = PROJECT / "docs" / "page.png"
PAGE_PICTURE_KEY = "dogbreeds-answer"
TIMING_FACTS = ("Server:", "In all:")


@pytest.fixture(scope="module")
def gateway(api_stack):
    """The stand-in for API Gateway in front of the session's `chalice local`."""
    state = Gateway(api_url=api_stack.url)
    with serving_gateway(state):
        yield state


# --- the browser ---


@pytest.fixture
def page(browser, gateway):
    """The page freshly loaded through the gateway, with nothing remembered from an earlier test."""
    gateway.received.clear()
    gateway.required_key = None
    browser.set_window_size(1000, 900)
    browser.get(gateway.url + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(gateway.url + "/")
    browser.get_log("browser")  # start each test with an empty console
    assert state(browser) == "ready"
    return browser


def state(driver) -> str:
    return driver.find_element("tag name", "body").get_attribute("data-state")


def wait_for_outcome(driver) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, ANSWER_TIMEOUT_S).until(lambda d: state(d) in ("answered", "failed"))
    return state(driver)


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def bars(driver) -> list[tuple[str, str]]:
    """(label, visible text) of each breed bar, top first."""
    items = driver.find_elements("css selector", "#bars li")
    return [(item.get_attribute("data-label"), item.text) for item in items]


def console_errors(driver, allow_network: bool = False) -> list[dict]:
    """The console's errors since the last call; with `allow_network`, not the browser's own line for a
    request that answered an error status (the API's 4xx answers are expected there)."""
    entries = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return [entry for entry in entries if not (allow_network and entry.get("source") == "network")]


def screenshot(driver, path: Path) -> None:
    """The whole page, however long, at the window's width."""
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, height + 140)  # the window's own frame takes part of its height
    driver.save_screenshot(str(path))


def what_the_answer_says(driver) -> str:
    """The answer as the page words it: verdict, bars and facts, less the timings that change every run."""
    terms = driver.find_elements("css selector", "#facts dt")
    values = driver.find_elements("css selector", "#facts dd")
    facts = [f"{term.text}: {value.text}" for term, value in zip(terms, values, strict=True)]
    lasting = [fact for fact in facts if not fact.startswith(TIMING_FACTS)]
    return "\n".join([text(driver, "verdict"), *(bar for _, bar in bars(driver)), *lasting])


def keep_page_picture(driver, shot: Path) -> None:
    """Make `shot` README's picture of the page (docs/page.png) when what its answer says differs from what
    the picture's PNG text records: a rerun with the same answer leaves the file alone."""
    said = what_the_answer_says(driver)
    if PAGE_PICTURE.exists() and Image.open(PAGE_PICTURE).info.get(PAGE_PICTURE_KEY) == said:
        return
    text_chunks = PngInfo()
    text_chunks.add_text(PAGE_PICTURE_KEY, said)
    Image.open(shot).save(PAGE_PICTURE, pnginfo=text_chunks, optimize=True)


def choose_file(driver, path: Path) -> None:
    driver.find_element("id", "file").send_keys(str(path))


def photo_file(tmp_path: Path, name: str, image: Image.Image, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


# --- the flows ---


def test_a_chosen_photo_gets_its_breed(page, gateway, samples, tmp_path):
    choose_file(page, samples / "Labrador_retriever_06455.jpg")
    assert wait_for_outcome(page) == "answered", text(page, "error")
    screenshot(page, tmp_path / "upload.png")
    keep_page_picture(page, tmp_path / "upload.png")
    assert Image.open(PAGE_PICTURE).info[PAGE_PICTURE_KEY] == what_the_answer_says(page)
    top_label, top_text = bars(page)[0]
    assert top_label == "Labrador_retriever" and "Labrador retriever" in top_text and "%" in top_text
    assert len(bars(page)) == 5
    assert text(page, "verdict") == "A Labrador retriever"
    facts = text(page, "facts")
    assert "dogbreeds version 2" in facts and "total" in facts and "ms" in facts
    # 700x487: its shorter side is over the model's 260, so the browser sent it shrunk, as a JPEG.
    [(_, path, content_type, size)] = gateway.uploads()
    assert path.startswith("/predict/image") and content_type == "image/jpeg"
    assert size < (samples / "Labrador_retriever_06455.jpg").stat().st_size
    assert console_errors(page) == []


def test_an_image_address_gets_its_breed(page, gateway, sample_files, tmp_path):
    from selenium.webdriver.common.keys import Keys

    field = page.find_element("id", "url")
    field.send_keys(f"{sample_files}/Labrador_retriever_06455.jpg", Keys.ENTER)
    assert wait_for_outcome(page) == "answered", text(page, "error")
    page.save_screenshot(str(tmp_path / "url.png"))
    assert bars(page)[0][0] == "Labrador_retriever"
    assert page.find_element("id", "preview").is_displayed()
    assert [upload[1] for upload in gateway.uploads()] == ["/predict"]
    assert console_errors(page) == []


def test_a_refused_address_is_a_readable_error(page, tmp_path):
    from selenium.webdriver.common.keys import Keys

    page.find_element("id", "url").send_keys("file:///etc/passwd", Keys.ENTER)
    assert wait_for_outcome(page) == "failed"
    page.save_screenshot(str(tmp_path / "refused-url.png"))
    assert text(page, "error-title") == "That address may not be fetched"
    assert text(page, "error-message")
    assert console_errors(page, allow_network=True) == []


def test_a_file_that_is_not_an_image_is_a_readable_error(page, gateway, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    choose_file(page, notes)
    assert wait_for_outcome(page) == "failed"
    page.save_screenshot(str(tmp_path / "not-an-image.png"))
    assert text(page, "error-title") == "That is not an image the service can read"
    assert "image" in text(page, "error-message")
    # The browser could not read it either, so it went as it was for the API to judge.
    assert gateway.uploads() == [("POST", "/predict/image", "application/octet-stream", notes.stat().st_size)]
    assert console_errors(page, allow_network=True) == []


def test_a_file_over_the_upload_limit_is_refused_before_it_is_sent(page, gateway, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00" * (MAX_UPLOAD_BYTES + 1))
    choose_file(page, big)
    assert wait_for_outcome(page) == "failed"
    assert text(page, "error-title") == "The photo is too large"
    assert gateway.uploads() == []
    assert console_errors(page) == []


def test_a_12_megapixel_photo_leaves_the_browser_small_and_upright(page, gateway, labrador, tmp_path):
    """A phone photo: 12.5 million pixels stored sideways with an EXIF orientation that turns it upright."""
    upright = Image.open(io.BytesIO(labrador)).resize((4242, 2951))
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels are turned a quarter to the left; viewers turn them right
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    photo = photo_file(tmp_path, "phone.jpg", stored, quality=95, exif=exif)
    assert photo.stat().st_size > 1_000_000
    choose_file(page, photo)
    assert wait_for_outcome(page) == "answered", text(page, "error")
    page.save_screenshot(str(tmp_path / "12mp.png"))
    [(_, _, content_type, size)] = gateway.uploads()
    assert content_type == "image/jpeg" and size < 100_000
    assert bars(page)[0][0] == "Labrador_retriever"
    # What the API received was already upright: wider than high, the model's 260 px on its shorter side.
    assert "374 × 260" in text(page, "facts")
    assert console_errors(page) == []


def test_an_iphone_heic_the_browser_cannot_draw_goes_as_it_is_and_the_api_converts_it(
    page, gateway, labrador, tmp_path
):
    """Chrome cannot draw HEIC on a canvas, so it cannot shrink one: the file goes as it is, within the upload
    limit, and the API turns it upright by its rotation and converts it."""
    upright = Image.open(io.BytesIO(labrador)).convert("RGB").resize((2016, 1402))
    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(as_a_phone_stores_it(upright, "HEIF"))
    assert "image/heic" in page.find_element("id", "file").get_attribute("accept")
    choose_file(page, photo)
    assert wait_for_outcome(page) == "answered", text(page, "error")
    page.save_screenshot(str(tmp_path / "heic.png"))
    [(_, path, content_type, size)] = gateway.uploads()
    assert path.startswith("/predict/image") and size == photo.stat().st_size
    assert content_type in ("image/heic", "application/octet-stream")  # as the browser types the file
    assert bars(page)[0][0] == "Labrador_retriever"
    # The photo's own size, upright, and that it went as it was.
    facts = text(page, "facts")
    assert "2016 × 1402" in facts and "sent as it is" in facts
    assert console_errors(page, allow_network=True) == []


def test_a_pasted_small_photo_goes_as_it_is_and_a_dropped_one_too(page, gateway, samples, tmp_path):
    photo = (samples / "people_with_dog.jpg").read_bytes()
    script = """
        const [data, kind] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "photo.jpg", {type: "image/jpeg"}));
        const event = kind === "paste"
            ? new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true})
            : new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true});
        document.body.dispatchEvent(event);
    """
    encoded = base64.b64encode(photo).decode()
    page.execute_script(script, encoded, "paste")
    assert wait_for_outcome(page) == "answered", text(page, "error")
    assert text(page, "verdict").startswith("A ")
    page.execute_script("document.body.dataset.state = 'ready'")
    page.execute_script(script, encoded, "drop")
    assert wait_for_outcome(page) == "answered", text(page, "error")
    page.save_screenshot(str(tmp_path / "paste-drop.png"))
    assert gateway.uploads() == [("POST", "/predict/image", "image/jpeg", len(photo))] * 2
    assert console_errors(page) == []


# An Appenzeller that the default model takes for an EntleBucher well under its confidence threshold, though
# it is sure that it is a dog.
UNSURE_PHOTO = Path("valid") / "090.Appenzeller" / "n02107908_7443.jpg"


def test_an_answer_the_model_is_not_sure_of_says_so(page, api_stack, dogs, tmp_path):
    photo = dogs / UNSURE_PHOTO
    request = urllib.request.Request(
        api_stack.url + "/predict/image", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S) as response:
        answer = json.load(response)
    assert answer["confident"] is False and answer["is_dog"] is True, (
        "the photo no longer makes the model unsure"
    )

    choose_file(page, photo)
    assert wait_for_outcome(page) == "answered", text(page, "error")
    page.save_screenshot(str(tmp_path / "not-sure.png"))
    assert text(page, "verdict") == f"Perhaps a {answer['predictions'][0]['breed']} not sure"
    assert page.find_element("css selector", "#verdict .tag").text == "not sure"
    assert bars(page)[0][0] == answer["predictions"][0]["label"]
    assert console_errors(page) == []


def test_a_picture_without_a_dog_says_so(page, gateway, tmp_path):
    blank = photo_file(tmp_path, "blank.png", Image.new("RGB", (300, 300), (40, 90, 200)))
    choose_file(page, blank)
    assert wait_for_outcome(page) == "answered", text(page, "error")
    page.save_screenshot(str(tmp_path / "not-a-dog.png"))
    assert text(page, "verdict") == "This does not look like a dog."
    assert text(page, "bars-note").startswith("If it is a dog after all")
    # The flat 300x300 PNG is smaller than any JPEG of it: it went as it was.
    assert gateway.uploads() == [("POST", "/predict/image", "image/png", blank.stat().st_size)]
    assert console_errors(page) == []


# API Gateway's own 403, and the same mapped to the API's error shape by a stage's gateway responses.
FORBIDDEN_BODIES = [
    b'{"message":"Forbidden"}',
    b'{"error": {"code": "api_key_invalid",'
    b' "message": "this API needs a valid API key in the x-api-key header"}}',
]


@pytest.mark.parametrize("forbidden_body", FORBIDDEN_BODIES, ids=["gateway-shape", "api-shape"])
def test_a_stage_that_needs_a_key_says_so_then_remembers_it(page, gateway, samples, tmp_path, forbidden_body):
    gateway.required_key = "key-for-tests"
    gateway.forbidden_body = forbidden_body
    choose_file(page, samples / "Labrador_retriever_06455.jpg")
    assert wait_for_outcome(page) == "failed"
    assert text(page, "error-title") == "This API needs a key"
    assert page.switch_to.active_element.get_attribute("id") == "api-key"
    page.save_screenshot(str(tmp_path / "needs-key.png"))
    key_field = page.find_element("id", "api-key")
    assert key_field.is_displayed()  # the key's section opened itself
    key_field.send_keys("key-for-tests")
    choose_file(page, samples / "Labrador_retriever_06455.jpg")
    assert wait_for_outcome(page) == "answered", text(page, "error")
    assert bars(page)[0][0] == "Labrador_retriever"
    page.refresh()
    assert page.find_element("id", "api-key").get_attribute("value") == "key-for-tests"
    assert console_errors(page, allow_network=True) == []


@pytest.fixture
def endpoint_down(gateway, tmp_path):
    """The gateway in front of a second `chalice local` whose endpoint address has nothing listening."""
    api = ChaliceLocal(tmp_path / "project", f"http://127.0.0.1:{free_port()}").wait_ready()
    working, gateway.api_url = gateway.api_url, api.url
    yield
    gateway.api_url = working
    api.stop()


def test_an_endpoint_that_is_down_is_a_readable_error(page, endpoint_down, samples, tmp_path):
    choose_file(page, samples / "Labrador_retriever_06455.jpg")
    assert wait_for_outcome(page) == "failed"
    page.save_screenshot(str(tmp_path / "endpoint-down.png"))
    assert text(page, "error-title") == "The model is not available right now"
    assert text(page, "error-message").endswith(f"Try again in {RETRY_AFTER_S} s.")
    assert console_errors(page, allow_network=True) == []


def test_an_async_stage_queues_the_photo_and_the_page_shows_its_answer(browser, endpoint, samples, tmp_path):
    """`chalice local` as an async stage whose S3 and SageMaker runtime are a real moto_server (with
    moto_server.AsyncOutputs answering SageMaker's output locations): the page gets a 202 and polls the result
    route; the test plays the endpoint (the real local one) once the photo is queued; the page shows it."""
    from moto_server import AsyncOutputs
    from selenium.webdriver.support.ui import WebDriverWait

    with async_stage(tmp_path / "project") as stage:
        outputs = stage.outputs
        browser.get(stage.api.url + "/")
        browser.get_log("browser")
        choose_file(browser, samples / "Labrador_retriever_06455.jpg")
        WebDriverWait(browser, ANSWER_TIMEOUT_S).until(lambda _: outputs.queued())
        WebDriverWait(browser, ANSWER_TIMEOUT_S).until(lambda d: "Queued" in text(d, "status"))
        assert state(browser) == "working"
        (queued,) = outputs.queued()
        AsyncOutputs.answer(queued, endpoint.url, stage.s3)
        assert wait_for_outcome(browser) == "answered", text(browser, "error")
        screenshot(browser, tmp_path / "async.png")
    assert bars(browser)[0][0] == "Labrador_retriever" and len(bars(browser)) == 5
    assert "answered from the queue" in text(browser, "facts")
    assert console_errors(browser) == []


def test_phone_width_and_labels(page, samples, tmp_path):
    page.set_window_size(390, 844)
    choose_file(page, samples / "Labrador_retriever_06455.jpg")
    assert wait_for_outcome(page) == "answered", text(page, "error")
    screenshot(page, tmp_path / "phone.png")
    # Nothing wider than the screen.
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    # Every field has a label, and the answer is announced.
    for element in page.find_elements("css selector", "input"):
        element_id = element.get_attribute("id")
        assert page.find_elements("css selector", f"label[for='{element_id}']"), element_id
    assert page.find_element("id", "live").get_attribute("aria-live") == "polite"
    # The keyboard reaches every control in reading order.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    focused = []
    for _ in range(4):
        ActionChains(page).send_keys(Keys.TAB).perform()
        focused.append(page.execute_script("const e = document.activeElement; return e.id || e.tagName"))
    assert focused == ["file", "url", "BUTTON", "SUMMARY"]
    assert console_errors(page) == []


def test_a_machine_without_the_browser_is_told_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium chromium-driver"):
        browser_paths()


def test_the_page_is_one_small_document_that_loads_nothing_else(gateway):
    with urllib.request.urlopen(gateway.url + "/") as response:
        html = response.read()
        policy = response.headers["Content-Security-Policy"]
    assert response.headers["Content-Type"].startswith("text/html")
    assert len(html) < 60_000
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert b"<script src" not in html and b'<link rel="stylesheet"' not in html
    config = json.loads(html.split(b'id="config">')[1].split(b"</script>")[0])
    model_config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert config["resize_size"] == model_config["preprocessing"]["resize_size"]
