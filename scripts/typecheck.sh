#!/usr/bin/env bash
# mypy over aquamask.model, aquamask.processes and aquamask.server. The card's folders are installed as
# aquamask.* through package-dir (an editable install is an import hook mypy cannot follow),
# so mypy reads them through a temporary aquamask/ folder of links to them.
set -euo pipefail
cd "$(dirname "$0")/.."
view=$(mktemp -d)
trap 'rm -rf "$view"' EXIT
mkdir "$view/aquamask"
cp aquamask/__init__.py "$view/aquamask/"
for folder in model processes server config; do
  ln -s "$PWD/$folder" "$view/aquamask/$folder"
done
.venv/bin/mypy --config-file pyproject.toml "$view/aquamask/model" "$view/aquamask/processes" "$view/aquamask/server"
