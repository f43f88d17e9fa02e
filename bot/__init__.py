"""Application wiring: settings, CLI, services."""
