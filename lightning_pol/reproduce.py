"""``python -m lightning_pol.reproduce``: the command; the app is :mod:`lightning_pol.apps.reproduce`."""

from lightning_pol.apps.reproduce import main

if __name__ == "__main__":
    main()
