#!/usr/bin/env bash
# `ansible-test sanity` on the collection vcl.lab as it ships: build the tarball, install it into an empty
# collections path (ansible-test runs from <path>/ansible_collections/vcl/lab), run every sanity test with the
# Python the project uses. ansible-test makes a virtualenv per test and installs its pinned tools from PyPI.
# Usage: scripts/sanity.sh [ansible-test sanity options, e.g. --test validate-modules]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
py=$repo/.venv/bin/python
work=$(mktemp -d /tmp/vcl-sanity.XXXXXX)
trap 'rm -rf "$work"' EXIT

# ansible-test bootstraps pip in its virtualenvs with a get-pip script from its own file server, which a machine
# that reaches only PyPI cannot fetch: give it the stand-in that uses Python's bundled pip instead.
cache=${HOME}/.ansible/test/cache
mkdir -p "$cache"
# The pip version ansible-test bootstraps (get_venv_packages in its python_requirements module).
pip_version=$("$py" - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(python_requirements.get_venv_packages)).group(1))
PY
)
cp scripts/ansible_test_get_pip.py "$cache/get_pip_${pip_version//./_}.py"

(cd "$work" && "$repo/.venv/bin/ansible-galaxy" collection build --output-path "$work/dist" "$repo" >/dev/null)
(cd "$work" && ANSIBLE_COLLECTIONS_PATH="$work/c" "$repo/.venv/bin/ansible-galaxy" collection install \
    -p "$work/c" "$work"/dist/*.tar.gz >/dev/null)
cd "$work/c/ansible_collections/vcl/lab"
PATH="$repo/.venv/bin:$PATH" "$repo/.venv/bin/ansible-test" sanity --python "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    --requirements --color no "$@" 2>&1 | grep -v -e '^WARNING: Location ' -e '^Looking in ' -e '^Processing ' \
    -e '^Collecting ' -e '^  Downloading ' -e '^ *━' -e '^Installing collected' -e '^Successfully installed' \
    -e '^  Attempting uninstall' -e '^    Found existing' -e '^    Uninstalling' -e '^      Successfully uninstalled'
exit "${PIPESTATUS[0]}"
