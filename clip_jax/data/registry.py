"""The registry of data sources, selected by `config.data.name`."""

from clip_jax.registry import Registry

SOURCES: Registry = Registry("data source", "config.data.name")
