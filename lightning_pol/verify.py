"""``python -m lightning_pol.verify``: the command; the app is :mod:`lightning_pol.apps.verify`."""

from lightning_pol.apps.verify import main

if __name__ == "__main__":
    main()
