"""Command-line entry points: quayd (the agent) and quayctl (the operator's tool)."""
