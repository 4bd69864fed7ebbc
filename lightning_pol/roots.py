"""``python -m lightning_pol.roots``: the command; the app is :mod:`lightning_pol.apps.roots`."""

from lightning_pol.apps.roots import main

if __name__ == "__main__":
    main()
