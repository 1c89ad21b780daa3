"""The running engine: the service that replays, answers and journals; configuration,
TLS, clocks, logs and metrics."""
