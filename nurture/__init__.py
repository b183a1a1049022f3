"""Shared domain package: the flow language, the data model and the settings."""
