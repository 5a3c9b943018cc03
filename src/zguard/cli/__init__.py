"""The `zguard` command: one module per command group; `main` builds the parser and imports a group only when it runs."""
