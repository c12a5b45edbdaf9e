"""The agent: the long-running loop of ``quayd`` and the socket ``quayctl`` talks to."""
