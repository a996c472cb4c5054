"""The store layer: one client per store, each behind a small interface with an embedded backend."""
