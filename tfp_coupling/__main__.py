"""``python -m tfp_coupling``: the ``tfp-coupling`` command line (see :mod:`tfp_coupling.cli`)."""

import sys

from tfp_coupling.cli import main

if __name__ == "__main__":
    sys.exit(main())
