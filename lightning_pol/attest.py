"""``python -m lightning_pol.attest``: the command; the app is :mod:`lightning_pol.apps.attest`."""

from lightning_pol.apps.attest import main

if __name__ == "__main__":
    main()
