"""Alien data cluster: application logic shared by the CLI, the Dagster assets and the API."""
