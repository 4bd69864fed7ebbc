"""``python -m lightning_pol.verify``: the command; the app is :mod:`lightning_pol.apps.verify`."""

import sys

from lightning_pol.apps.verify import main, open_overrides

if __name__ == "__main__":
    sys.argv[1:] = open_overrides(sys.argv[1:])
    main()
