#!/usr/bin/env bash
# Offline validation of the deployment template (the Bicep compiler cannot be installed here):
#   1. every .bicep file under infra/ parses with pycep-parser;
#   2. checkov scans infra/ (framework bicep) with the skip list in infra/.checkov.yaml.
# pycep-parser and checkov live in two virtual environments under .venv-infra/ (checkov pins an older
# pycep-parser), created on first use from the pinned requirements in infra/ and rebuilt when those change.
# Needs python3 (3.9-3.12) and PyPI; no network access otherwise. Usage: bash infra/validate.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${INFRA_PYTHON:-python3}"
venvs="$root/.venv-infra"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1

# ensure_venv NAME REQUIREMENTS: create or refresh .venv-infra/NAME from REQUIREMENTS.
ensure_venv() {
  local dir="$venvs/$1" requirements="$2" stamp want
  stamp="$dir/.requirements.sha256"
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [[ -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "validate-infra: installing $requirements into .venv-infra/$1"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install -qq --requirement "$requirements"
  echo "$want" >"$stamp"
}

ensure_venv pycep infra/requirements-pycep.txt
ensure_venv checkov infra/requirements-checkov.txt

echo "validate-infra: parsing Bicep with pycep-parser $("$venvs/pycep/bin/python" -c \
  'import importlib.metadata as m; print(m.version("pycep-parser"))')"
"$venvs/pycep/bin/python" infra/scripts/bicep_checks.py parse infra

echo "validate-infra: checkov $("$venvs/checkov/bin/checkov" --version)"
report_dir="$(mktemp -d)"
trap 'rm -rf "$report_dir"' EXIT
checkov_status=0
"$venvs/checkov/bin/checkov" --directory infra --framework bicep --skip-download \
  --config-file infra/.checkov.yaml --compact --quiet \
  --output cli --output json --output-file-path "console,$report_dir/checkov.json" || checkov_status=$?
summary_status=0
"$venvs/checkov/bin/python" infra/scripts/bicep_checks.py summary \
  "$report_dir/checkov.json" infra/.checkov.yaml || summary_status=$?
if [[ $checkov_status -ne 0 || $summary_status -ne 0 ]]; then
  echo "validate-infra: FAILED (checkov exit $checkov_status)" >&2
  exit 1
fi
echo "validate-infra: OK"
