"""The Data API: the only door to a tenant's data from outside the cluster."""

from data_api.app import create_app

__all__ = ["create_app"]
