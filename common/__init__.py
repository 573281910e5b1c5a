"""What every app's web layer shares; depends on Django only (the bottom layer, see pyproject)."""
