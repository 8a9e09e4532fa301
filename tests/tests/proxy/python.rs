// Python client tests: see tests/python.
