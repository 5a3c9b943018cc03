"""The `zguard serve` process: wiring of services, listeners, isolation, the pid file and the lifecycle."""
