"""Check a report page in a real browser: headless Chromium renders it, takes a screenshot, and
the page's own script reports how many images loaded and how many script errors happened.

    python -m lightnas_cli.browser_check trainings/<sweep>/report/report.html

(shell_scripts/check_report.sh installs Debian's chromium first if needed). The page passes when
every image loaded, no script error happened, and the screenshot is not blank.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Flags for a sandboxed, offline, headless run as root (without the background-networking
# flags Chromium keeps trying to reach Google's hosts on a closed network).
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--virtual-time-budget=5000"]


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def check_page(page: Path, browser: str | None = None, timeout: float = 120) -> dict:
    """{'images': 'loaded/total', 'errors': int, 'distinct_colours': int, 'screenshot': path,
    'ok': bool} for an HTML file."""
    from PIL import Image

    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found; install Debian's `chromium` package "
                                "(shell_scripts/check_report.sh does)")
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory() as profile:
        flags = _FLAGS + [f"--user-data-dir={profile}"]
        dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=timeout).stdout
        screenshot = page.with_name(page.stem + "-screenshot.png")
        subprocess.run([browser, *flags, f"--screenshot={screenshot}",
                        "--window-size=1280,1600", page.as_uri()],
                       capture_output=True, text=True, timeout=timeout)
    match = re.search(r'<html[^>]*data-images="(\d+)/(\d+)"[^>]*data-errors="(\d+)"', dom)
    images = f"{match.group(1)}/{match.group(2)}" if match else "?"
    errors = int(match.group(3)) if match else -1
    colours = 0
    if screenshot.is_file():
        with Image.open(screenshot) as picture:
            pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
        colours = len(np.unique(pixels[:: max(1, len(pixels) // 200000)], axis=0))
    loaded_all = bool(match) and match.group(1) == match.group(2) and int(match.group(2)) > 0
    return {"images": images, "errors": errors, "distinct_colours": colours,
            "screenshot": str(screenshot),
            "ok": loaded_all and errors == 0 and colours > 10}


def main(argv: list[str] | None = None) -> int:
    pages = argv if argv is not None else sys.argv[1:]
    if not pages:
        print("usage: python -m lightnas_cli.browser_check PAGE.html [...]", file=sys.stderr)
        return 2
    failed = 0
    for page in pages:
        result = check_page(Path(page))
        print(json.dumps({"page": page, **result}))
        failed += not result["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
