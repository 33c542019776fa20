"""netbootd benchmarks beside real peers: `make bench`, `make bench-quick`. See bench/run.py."""
