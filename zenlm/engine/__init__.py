"""Inference engine: sampling, sequences, generation loop."""
