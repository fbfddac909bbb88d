"""Stand-in for the get-pip.py bootstrap script that ansible-test downloads from its own file server.

ansible-test makes each sanity test's virtualenv without pip, then runs its cached "get-pip" script with pip's
install arguments (for example ``pip==24.2``). That server is not reachable from a lab controller without internet
access, so scripts/test.sh places this script in ansible-test's cache instead: it installs the pip that ships
with Python (ensurepip, no network), then lets that pip install what ansible-test asked for from the package
index pip is configured with.
"""

import ensurepip
import os
import subprocess
import sys

saved = dict(os.environ)
ensurepip.bootstrap(upgrade=True)  # it points PIP_CONFIG_FILE at /dev/null for its own, offline install
wanted = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
if wanted:
    subprocess.run([sys.executable, "-m", "pip", "install", *wanted], check=True, env=saved)
