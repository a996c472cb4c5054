"""Dagster code location of the Alien data cluster (loaded by ``workspace.yaml``)."""

from alien_assets.definitions import defs

__all__ = ["defs"]
