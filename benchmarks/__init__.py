"""The benchmark suite (``tasd bench`` lists it): one script per question, results stamped in ``results/``.

``models/`` is the model zoo the model benchmarks and the tests use; it is
part of the source checkout, not of the installed package.
"""
