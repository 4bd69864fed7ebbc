"""``python -m lightning_pol.train``: the command; the app is :mod:`lightning_pol.apps.train`."""

from lightning_pol.apps.train import main

if __name__ == "__main__":
    main()
