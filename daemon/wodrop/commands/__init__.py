"""One module per ``wodrop`` sub-command; each exposes ``run(args) -> exit code``."""
