"""``python -m lightning_pol.export``: the command; the app is :mod:`lightning_pol.apps.export`."""

from lightning_pol.apps.export import main

if __name__ == "__main__":
    main()
