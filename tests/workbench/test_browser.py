"""The workbench in headless Chromium: every tab, a tiny study, a training run stopped early, a chat.

Runs `python app.py serve` in a temp project (a subprocess using all cores) and saves a screenshot of
each tab under artifacts/screenshots/.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request
from pathlib import Path

import pytest

from core.data import Dataset, prepare
from tests.helpers import ROOT, TEXT, TINY_SPACE, running_workbench

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-project")
    (root / "verse.txt").write_text(TEXT, encoding="utf-8")
    prepare([root / "verse.txt"], root / "dataset")
    return root


@pytest.fixture(scope="module")
def server(project):
    with running_workbench(project) as server:  # all cores for its jobs: the page must stay responsive all the same
        yield server.url


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(server)
        page.get_by_role("tab", name="Dataset").wait_for()
        yield page
        browser.close()


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def field(page, label: str):
    """The input labelled `label` on the open tab (other tabs stay in the page, hidden, with the same labels)."""
    return page.get_by_label(label, exact=True).filter(visible=True)


def start_training(page, name: str, values: dict[str, str]) -> None:
    """Fill the Train tab's fields by label, name the model, press Start."""
    for label, value in values.items():
        field(page, label).fill(value)
    field(page, "Model name").fill(name)
    page.get_by_role("button", name="Start training").click()


def test_dataset_tab_shows_the_corpus(page):
    open_tab(page, "Dataset")
    page.get_by_text("Vocabulary:").wait_for()
    page.get_by_text("Prepare dataset").wait_for()
    shoot(page, "dataset")


TINY_FIXED = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4}


def test_a_newcomers_upload_is_prepared_and_named_as_they_named_it(page, tmp_path):
    upload = tmp_path / "my_letters.txt"
    upload.write_text(TEXT * 24, encoding="utf-8")  # ~200 KB of their own text
    open_tab(page, "Dataset")
    page.get_by_text("Upload text files").filter(visible=True).click()
    page.locator("input[type=file]").first.set_input_files(str(upload))
    page.get_by_role("button", name="Prepare dataset").click()
    page.get_by_text("my_letters.txt").filter(visible=True).first.wait_for(timeout=60_000)  # not uploads/2026…
    assert "uploads/20" not in page.locator("body").inner_text()  # the stored name, e.g. uploads/20261207-…
    shoot(page, "dataset-uploaded")


def test_tune_tab_runs_a_budgeted_tournament_and_saves_its_winner(page):
    open_tab(page, "Tune")
    field(page, "Study name").fill("browser-race")
    # 90 s of the tiny model (5 ms/step idle) hold one rung up to 50 ms/step: on busy cores (CI) 45 s did not
    field(page, "Total budget (minutes)").fill("1.5")
    field(page, "Save the winner as (model name)").fill("browser-winner")
    page.get_by_role("button", name="More settings").filter(visible=True).first.click()
    field(page, "Search even if the budget is short").check()
    page.get_by_label('Keep these fixed in every candidate (JSON, e.g. {"n_layer": 4, "block_size": 128})').filter(
        visible=True
    ).fill(json.dumps(TINY_FIXED))
    # the plan says what it does about the tokenizer before Start (this tiny text: characters, and why)
    page.locator("#tune-plan").get_by_text("characters: a BPE would read this text").wait_for()
    shoot(page, "tune-budget")
    page.get_by_role("button", name="Start", exact=True).click()
    # "Started tournament ..." gives way to the job's status line at the next tick: either says it started
    page.get_by_text("tournament browser-race").filter(visible=True).first.wait_for()
    running = page.get_by_text("left").filter(visible=True).first
    failed = page.locator(".wb-error").filter(visible=True).first
    running.or_(failed).wait_for()
    assert not failed.is_visible(), failed.inner_text()
    page.get_by_role("gridcell", name="COMPLETE").filter(visible=True).first.wait_for(timeout=60_000)
    shoot(page, "tune-budget-running")
    page.get_by_text("saved models/browser-winner").filter(visible=True).first.wait_for(timeout=120_000)


def tournament_bar(page) -> tuple[int, int]:
    """(seconds left, the running candidate's step) as the Tune tab's progress bar says them."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = " ".join(page.locator(".wb-bar span").filter(visible=True).all_inner_texts())
        step, left = re.search(r"at step ([\d,]+)", text), re.search(r"(\d+):(\d\d) left", text)
        if step and left:
            return int(left[1]) * 60 + int(left[2]), int(step[1].replace(",", ""))
        time.sleep(0.5)
    raise AssertionError(f"no step and time left in the bar: {text!r}")


def settled_text(locator, quiet_s: float = 3.0, timeout_s: float = 60.0) -> str:
    """The locator's text once it has not changed for `quiet_s` (a plan is asked again at every change)."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        text = locator.inner_text()
        if text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return text
        time.sleep(0.3)
    return last or ""


def default_paces(page, seconds: float = 40) -> list[float]:
    """The default candidate's pace (seconds a step) as the bar says it while it trains."""
    paces, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = " ".join(page.locator(".wb-bar span").filter(visible=True).all_inner_texts())
        found = re.search(r"candidate 0 at step [\d,]+, train loss [\d.]+, ([\d.]+) ms a step", text)
        if found:
            paces.append(float(found[1]) / 1000)
        elif paces:  # the next candidate: another shape, another pace
            break
        time.sleep(0.5)
    return paces


def test_a_running_tournament_moves_on_the_page_reload_included(page, server):
    open_tab(page, "Tune")
    field(page, "Study name").fill("live")
    field(page, "Save the winner as (model name)").fill("live-winner")
    page.get_by_label('Keep these fixed in every candidate (JSON, e.g. {"n_layer": 4, "block_size": 128})').filter(
        visible=True
    ).fill("{}")  # the default model, as a newcomer runs it: its steps are the model's, not the page's bookkeeping
    field(page, "Search even if the budget is short").check()  # short slices: no compile pause in the first 40 s
    field(page, "Total budget (minutes)").fill("3")
    page.locator("#tune-plan").get_by_text("Plan:").wait_for(timeout=60_000)  # said before Start
    plan = settled_text(page.locator("#tune-plan"))  # the plan of the last change (the fixed fields included)
    assert "to train the default model here" in plan and "a short search" in plan
    planned = float(re.search(r"the default model at ([\d.]+) ms a step", plan)[1]) / 1000
    started = time.monotonic()
    page.get_by_role("button", name="Start", exact=True).click()
    paces = default_paces(page)
    # The plan's pace is the run's, within 30% where training has the cores (tests/core/test_newcomer.py). Here
    # the page watching the run costs it: headless Chromium drawing the bar (a fifth of a core) and the server
    # answering its polls leave the two OpenMP threads waiting on each other, and the run went 1.8-2.2x slower
    # than the quiet pace the plan measured (47-56 against 92-126 ms a step; with no page open it ran within
    # 20% of it; 2026-12-07). What this checks is that the page reports both, and that the plan is not the
    # newcomer's 6x off; the run's pace replaces the plan's for the next one (core.tune.speed).
    if not (paces and 1 / 3 < statistics.median(paces) / planned < 3.0):
        page.get_by_role("button", name="Stop", exact=True).filter(visible=True).first.click()  # free the next test
        raise AssertionError((planned, paces))
    left, step = tournament_bar(page)
    time.sleep(5)
    later_left, later_step = tournament_bar(page)
    assert later_left < left and later_step > step, (left, step, later_left, later_step)
    assert time.monotonic() - started < 30  # seen moving within the first 30 s of the run
    shoot(page, "tune-tournament-running")
    page.reload()
    open_tab(page, "Tune")
    after_left, after_step = tournament_bar(page)
    assert field(page, "Study name").input_value() == "live"  # the form is the running tournament's
    assert float(field(page, "Total budget (minutes)").input_value()) == 3
    assert after_left < later_left and after_step > later_step
    assert time.monotonic() - started < 60  # and again after a reload (a busy CI machine reloads slowly)
    page.locator(".wb-plan").filter(visible=True).get_by_text("Plan:").wait_for(timeout=5_000)
    page.get_by_role("button", name="Stop", exact=True).filter(visible=True).first.click()
    page.get_by_text("Resume continues the tournament").filter(visible=True).first.wait_for(timeout=60_000)
    page.get_by_role("gridcell", name="STOPPED").filter(visible=True).first.wait_for(timeout=10_000)
    shoot(page, "tune-tournament-stopped")


def test_tune_tab_runs_a_study_with_live_table_and_plots_and_stays_responsive(page, server):
    open_tab(page, "Train")  # its first rendering (0.3-0.7 s idle) is not the latency measured below
    open_tab(page, "Tune")
    page.get_by_text("Trials only", exact=True).click()
    field(page, "Study name").fill("browser")
    field(page, "Trials").fill("3")
    field(page, "Steps per trial").fill("150")
    page.get_by_text("More settings").click()
    field(page, "Steps between evals").fill("10")
    field(page, "Batches per eval").fill("2")
    editor = page.locator(".cm-content").first
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(json.dumps(TINY_SPACE))
    page.get_by_role("button", name="Start study").click()
    page.get_by_text("study browser").filter(visible=True).first.wait_for()
    # The first plot loads plotly.js into the page: a one-off 2-3 s of the browser's own time on two busy
    # cores (the server sat idle in select meanwhile, by py-spy dump), so the click is timed after it.
    page.locator(".js-plotly-plot").filter(visible=True).first.wait_for()
    assert not page.get_by_text("finished after").filter(visible=True).count(), "the study ended before the click"

    # the server answers at once while trials train (no job holds the GIL), and so does a click
    answers = []
    for _ in range(3):
        started = time.monotonic()
        with urllib.request.urlopen(server, timeout=10) as response:
            response.read()
        answers.append(time.monotonic() - started)
    open_tab(page, "Train")
    started = time.monotonic()
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("No train job is running.").wait_for(timeout=10_000)
    latency = time.monotonic() - started
    open_tab(page, "Tune")

    complete = page.get_by_role("gridcell", name="COMPLETE")
    complete.first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    page.get_by_text("study browser: finished after").filter(visible=True).first.wait_for()
    page.get_by_text("3 trial(s): 3 complete").wait_for()
    assert complete.count() == 3
    print(f"page served in {max(answers):.2f}s, click answered in {latency:.2f}s while the study trained")
    # A job that holds the GIL stalls every request (torch._dynamo's lazy import did, for 3.7 s). A click
    # also waits for the browser, which shares the two cores with training and re-renders the plots as
    # trials report: 0.7-1.9 s here, 2.9 s once in CI; the server's own answer stays far below it.
    assert max(answers) < 1.0, f"the server took {max(answers):.2f}s to serve the page during a study"
    assert latency < 3.0, f"the page took {latency:.2f}s to answer a click during a study"
    shoot(page, "tune")


def test_train_tab_trains_survives_a_reload_and_stops(page, server):
    open_tab(page, "Train")
    start_training(
        page,
        "browser-model",
        {
            "Layers": "1",
            "Heads": "2",
            "Width (n_embd)": "16",
            "Context (tokens)": "16",
            "Batch size": "8",
            "Warmup steps": "5",
            "Max steps (0 = no limit)": "5000",
            "Steps between evals": "25",
            "Batches per eval": "4",
            "Sample length (tokens)": "60",
        },
    )
    page.get_by_text("Started training browser-model").wait_for()
    page.get_by_text("tokens/s").wait_for()

    page.reload()  # the job lives on the server: the page re-attaches
    page.get_by_role("tab", name="Train").wait_for()
    open_tab(page, "Train")
    page.get_by_text("tokens/s").wait_for()
    page.get_by_text("Latest sample").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    shoot(page, "train")
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("stopped after").wait_for()
    field(page, "Model").wait_for()


def send_message(page, text: str) -> None:
    """Type `text` in the Chat tab and wait for it and the start of a reply."""
    box = page.get_by_placeholder("Type a message and press Enter")
    box.fill(text)
    box.press("Enter")
    page.get_by_test_id("user").get_by_text(text).wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=bot]')].some(b => b.innerText.trim().length > 5)"
    )


def test_chat_tab_streams_a_reply_and_clears(page):
    open_tab(page, "Chat")
    send_message(page, "To be, or not")
    shoot(page, "chat")
    # Clear cancels a streaming reply, but an update already on its way may land after it: wait until the reply
    # stops growing (as a reader would), then clear
    page.wait_for_function(
        """() => new Promise(done => {
            const text = () => [...document.querySelectorAll('[data-testid=bot]')].map(b => b.innerText).join();
            const before = text();
            setTimeout(() => done(text() === before), 1500);
        })""",
        timeout=60_000,
    )
    page.locator("#chat-clear").click()
    page.get_by_test_id("user").wait_for(state="detached")


def test_chat_tab_shows_the_models_card_and_exports_it_to_onnx(page):
    open_tab(page, "Chat")
    page.get_by_role("button", name="Refresh list").click()
    page.get_by_text("Model card and export").click()
    card = page.locator("#model-card")
    card.get_by_text("nats per character").wait_for()
    page.get_by_role("button", name="Export to ONNX").click()
    page.get_by_text("Checked in onnxruntime").wait_for(timeout=180_000)
    page.locator('a[download$="-onnx.zip"]').first.wait_for()  # the zip's download link
    shoot(page, "chat-card-export")


def test_chat_tab_chats_with_a_bpe_model_in_any_script(page, project):
    from core import checkpoint as ckpt
    from core.config import ModelConfig
    from core.model import GPT

    prepare([project / "verse.txt"], project / "bpe-data", tokenizer="bpe", vocab_size=300)
    vocab = Dataset(project / "bpe-data").vocab
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=len(vocab))
    ckpt.save_model(project / "models" / "browser-bpe", ckpt.weights_for_saving(GPT(config)), config, vocab, {})
    open_tab(page, "Chat")
    page.get_by_role("button", name="Refresh list").click()
    chooser = page.get_by_label("Model", exact=True).filter(visible=True)
    chooser.click()
    chooser.fill("browser-bpe")
    chooser.press("Enter")
    send_message(page, "Ça va? 日本 ☃")
    assert not page.get_by_text("not in this model's vocabulary").count()  # a byte-level BPE knows every character
    shoot(page, "chat-bpe")


def test_train_tab_starts_a_run_from_a_saved_model(page, project):
    open_tab(page, "Train")
    page.get_by_role("button", name="Refresh").filter(visible=True).first.click()
    chooser = page.get_by_label("Start from", exact=False).filter(visible=True)
    chooser.click()
    chooser.fill("browser-model")
    chooser.press("Enter")
    page.get_by_text("Starting from browser-model").wait_for()
    assert field(page, "Layers").input_value() == "1" and field(page, "Layers").is_disabled()  # the base's shape
    start_training(
        page,
        "browser-fine",
        {"Max steps (0 = no limit)": "30", "Steps between evals": "15", "Max minutes (0 = no limit)": "0"},
    )
    page.get_by_text("Started training browser-fine from browser-model").wait_for()
    page.get_by_text("max iters at step 30").first.wait_for()
    shoot(page, "train-from-a-model")
    saved = json.loads((project / "models" / "browser-fine" / "config.json").read_text())
    assert saved["base"]["name"] == "browser-model" and saved["model"]["n_layer"] == 1


def test_train_tab_compares_saved_models(page):
    open_tab(page, "Train")
    page.get_by_role("button", name="Refresh").filter(visible=True).last.click()
    chooser = page.get_by_label("Models", exact=True).filter(visible=True)
    for name in ("browser-model", "browser-winner"):
        chooser.click()
        chooser.fill(name)
        chooser.press("Enter")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("Compared browser-model, browser-winner").wait_for()
    page.get_by_text("Each model continues the prompt").wait_for()
    shoot(page, "compare")
