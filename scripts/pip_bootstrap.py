"""Stand-in for the pip bootstrap script ansible-test downloads from its own file server.

ansible-test runs it (as ``get-pip.py``) inside a new, pip-less virtual environment with pip's
install arguments. Here pip comes from the interpreter's own ``ensurepip`` and the requested
packages from the package index, which is all this needs.
"""

import subprocess
import sys


def main():
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet"] + args)


if __name__ == "__main__":
    main()
