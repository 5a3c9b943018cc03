"""The HTTP side: two ASGI apps (API and console), their middleware and error mapping.

Nothing here imports torch or diffusers; the engine is reached through `zguard.engine`'s
interface, wired in by `zguard.serve.wiring`.
"""
