"""Pages of the dashboard; dashboards/app.py lists them in its navigation."""
