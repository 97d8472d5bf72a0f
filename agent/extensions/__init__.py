"""Command extensions (poll, standby, log, clean, deploy); ``daemon.build_agent``
registers them on the agent it assembles."""
