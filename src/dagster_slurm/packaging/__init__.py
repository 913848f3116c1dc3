"""Packaging layer: packers (pixi-pack, uv), cache keys, the remote environment cache, deploy."""
