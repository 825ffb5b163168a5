"""Benchmarks of sessiond: figures and ratios against baselines measured in the same run.

Run ``python -m bench`` (``--help`` for options). Nothing here asserts a speed: the output is
read by people, and the goals it prints are the design's, for comparison only.
"""
