"""Training (installed as ``ofa_sdk.training``)."""
