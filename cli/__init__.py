"""qrr.cli: the `qrr` and `qrr-export` commands."""
