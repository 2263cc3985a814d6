"""Open every HTML report of an OUTPUT_DIR in headless Chromium and fail on what a reader would
meet: console errors, images that do not load, internal links that lead nowhere.

    python3 scripts/check_reports.py OUTPUT_DIR [--screenshots DIR]

Uses only the standard library and ``tests/browser.py`` (the browser tests' DevTools client), so
it runs with any Python 3.11 beside Debian's ``chromium``; ``scripts/container_ci.sh`` runs it
on the reports the container wrote. Exit code 0 when every report passes, 1 otherwise, 69 when
Chromium is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import Browser, chromium  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--screenshots", type=Path, help="save one PNG per report here")
    args = parser.parse_args(argv)
    binary = chromium()
    if binary is None:
        print("check_reports: chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 69
    reports = sorted(args.output_dir.glob("sub-*.html"))
    reports += sorted(args.output_dir.glob("group/*.html"))
    if not reports:
        print(f"check_reports: no report in {args.output_dir}", file=sys.stderr)
        return 1
    failed = 0
    with Browser(binary) as browser:
        for report in reports:
            check = browser.inspect_page(report)
            name = report.relative_to(args.output_dir)
            verdict = "ok" if not check.problems else "FAILED"
            print(f"{name}: {verdict}: {check.n_images} images, {check.n_links} links")
            for problem in check.problems:
                print(f"    {problem}")
            failed += bool(check.problems)
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                (args.screenshots / f"{report.stem}.png").write_bytes(check.screenshot)
    print(f"{len(reports) - failed} of {len(reports)} reports open cleanly in Chromium")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
