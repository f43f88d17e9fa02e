"""Jinja2 reply templates (话术), one folder per locale; deployers override them file by file."""
