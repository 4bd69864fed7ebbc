"""``python -m lightning_pol.attacks``: the command; the app is :mod:`lightning_pol.apps.attacks`."""

from lightning_pol.apps.attacks import main

if __name__ == "__main__":
    main()
