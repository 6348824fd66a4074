"""Latency benchmark: cmrt against diffusers' ConsistencyModelPipeline, same model, batch and steps.

Run with `cmrt bench` or `make bench MODEL=...`; see `run.py` for the options.
"""
