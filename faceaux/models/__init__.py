"""Reference networks: backbones, the FAN landmark network, and the papers' models."""
