"""Model integrity: the pinned manifest of a model directory (the hash whitelist).

`zguard.integrity.manifest` pins and verifies a directory; `zguard.engine.verified_load` loads a
pipeline from the very bytes it hashed, so a file swapped between check and load cannot get in.
"""
