"""The daemon's pipeline: discover -> settle -> claim -> validate -> batch -> upload -> finish."""
