"""Devices: target profiles, on-device scripts, latency prediction, deploy."""
