"""Dagster code location of the Alien data cluster (loaded by ``workspace.yaml``)."""

import warnings

from dagster import BetaWarning

# Dagster warns that a parameter of its own sensor class is in beta whenever a sensor is
# defined: nothing a user of this code location can act on.
warnings.filterwarnings("ignore", category=BetaWarning, module=r"dagster\.")

from alien_assets.definitions import defs  # noqa: E402

__all__ = ["defs"]
