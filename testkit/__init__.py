"""Test support shared by the tests (tests/) and the benchmarks (benchmarks/), which never import
each other: real model versions, a real `bentoml serve`, the fault harness, production logs.
Not part of the product: neither the wheel nor an image carries it."""
