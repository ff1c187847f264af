"""Helpers for infra/validate.sh: parse every Bicep file with pycep-parser; summarise a checkov JSON report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_all(infra_dir: Path) -> int:
    """Parse every .bicep file under `infra_dir` with pycep-parser; return the number of failures."""
    from pycep import BicepParser  # only installed in the pycep environment

    files = sorted(infra_dir.rglob("*.bicep"))
    if not files:
        print(f"pycep: no .bicep files under {infra_dir}", file=sys.stderr)
        return 1
    parser = BicepParser()
    failures = 0
    for path in files:
        try:
            parser.parse(file_path=path)
        except Exception as exc:  # lark raises several unrelated exception types
            failures += 1
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"pycep: FAILED {path}: {type(exc).__name__}: {first_line}", file=sys.stderr)
        else:
            print(f"pycep: parsed {path}")
    print(f"pycep: {len(files) - failures} of {len(files)} Bicep files parsed, {failures} failed")
    return failures


def summarise(report: Path, skip_config: Path) -> int:
    """Print checkov's counts from its JSON report; return 1 on failed checks, parsing errors or an empty scan."""
    data = json.loads(report.read_text())
    runs = data if isinstance(data, list) else [data]
    passed = failed = skipped = parsing_errors = resources = 0
    for run in runs:
        summary = run.get("summary", {})
        passed += int(summary.get("passed", 0))
        failed += int(summary.get("failed", 0))
        skipped += int(summary.get("skipped", 0))
        parsing_errors += int(summary.get("parsing_errors", 0))
        resources += int(summary.get("resource_count", 0))
        for path in run.get("results", {}).get("parsing_errors", []):
            print(f"checkov: could not parse {path}", file=sys.stderr)
    skip_list = [
        line.strip()[2:].strip() for line in skip_config.read_text().splitlines() if line.strip().startswith("- CKV")
    ]
    print(
        f"checkov: passed {passed}, failed {failed}, skipped inline {skipped}, parsing errors {parsing_errors}, "
        f"resources {resources}; not run by {skip_config}: {len(skip_list)} ({', '.join(skip_list)})"
    )
    if failed or parsing_errors or passed == 0:
        return 1
    return 0


def main() -> int:
    """Command line: `parse INFRA_DIR` or `summary REPORT_JSON SKIP_CONFIG`."""
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    parse_cmd = commands.add_parser("parse", help="parse every .bicep file under a folder with pycep-parser")
    parse_cmd.add_argument("infra_dir", type=Path)
    summary_cmd = commands.add_parser("summary", help="summarise a checkov JSON report")
    summary_cmd.add_argument("report", type=Path)
    summary_cmd.add_argument("skip_config", type=Path)
    args = parser.parse_args()
    if args.command == "parse":
        return 1 if parse_all(args.infra_dir) else 0
    return summarise(args.report, args.skip_config)


if __name__ == "__main__":
    sys.exit(main())
