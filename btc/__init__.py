"""btc: brain tumour MRI classification — research decision support, not a diagnostic device."""

__version__ = "0.1.0"
