"""Benchmarks: print figures and ratios against real peers; never fail on speed."""
