"""``python -m lightning_pol.code``: the command; the app is :mod:`lightning_pol.apps.code`."""

from lightning_pol.apps.code import main

if __name__ == "__main__":
    main()
