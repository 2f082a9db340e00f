"""The report in a real browser: headless Chromium renders a copy of report.html that sits alone
in another folder, and every image must decode (naturalWidth > 0) and every audio player must
load its data. Skipped (with the reason) where no Chromium is installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from vqgen.report import write_report

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed "
                                "(apt-get install chromium)")

# Marks every <img> that did not decode and every <audio> that cannot play, then counts them.
CHECK = """<script>
window.addEventListener('load', () => setTimeout(() => {
  let bad = 0;
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) { img.setAttribute('data-broken', '1'); bad++; }
  }
  const audios = Array.from(document.querySelectorAll('audio'));
  for (const a of audios) {
    if (a.error || a.readyState < 1) { a.setAttribute('data-broken', '1'); bad++; }
  }
  document.body.setAttribute('data-checked', document.images.length + ':' + audios.length + ':' + bad);
}, 500));
</script>"""


def render(html_path, tmp_path) -> str:
    """The DOM of ``html_path`` after Chromium loaded it and ran CHECK."""
    page = html_path.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>")
    html_path.write_text(page, encoding="utf-8")
    profile = tmp_path / f"profile-{uuid.uuid4().hex}"
    proc = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}",
         "--virtual-time-budget=10000", "--dump-dom", html_path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def checked(dom: str) -> tuple[int, int, int]:
    match = re.search(r'data-checked="(\d+):(\d+):(\d+)"', dom)
    assert match, "the check script did not run"
    return tuple(map(int, match.groups()))


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run"
    samples = run / "samples"
    samples.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 62), dtype=np.uint8)).save(samples / "samples_grid.png")
    (samples / "samples_grid.json").write_text(json.dumps({"rows": ["Dress", "Bag", "Coat"],
                                                           "caption": "one row per class"}))
    Image.fromarray(rng.integers(0, 256, (22, 42, 3), dtype=np.uint8)).save(samples / "reconstructions.png")
    sf.write(samples / "voice_0.wav", 0.1 * np.sin(np.arange(8000) / 10).astype(np.float32), 16000)
    Image.fromarray(rng.integers(0, 256, (40, 80), dtype=np.uint8)).save(samples / "voice_0.png")
    (run / "metrics.json").write_text(json.dumps({"test_psnr": 24.2, "sample_fid": 2.5}))
    (run / "logs").mkdir()
    (run / "logs" / "prior.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5 - s / 10}) + "\n" for s in range(1, 20)))
    return run


def test_copied_report_shows_every_image_and_audio(run_dir, tmp_path):
    elsewhere = tmp_path / "mailed"
    elsewhere.mkdir()
    copy = elsewhere / "report.html"
    shutil.copy(write_report(run_dir), copy)  # the report alone, without samples/
    images, audios, bad = checked(render(copy, tmp_path))
    assert (images, audios, bad) == (3, 1, 0)


def test_the_check_catches_a_broken_image(run_dir, tmp_path):
    page = write_report(run_dir).read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace('<img src="data:', '<img src="missing.png" data-x="', 1),
                      encoding="utf-8")
    images, _, bad = checked(render(broken, tmp_path))
    assert images == 3 and bad == 1
