"""Data: pp ops (pp.py), input pipelines (tfds_input.py, jsonl_source.py), TFDS builders (builders/)."""
