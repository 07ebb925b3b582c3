"""An asynchronous bare-metal power and provisioning conductor."""

__version__ = "0.1.0"
