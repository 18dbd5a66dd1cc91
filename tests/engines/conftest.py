def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s (e.g. starts a local Ray instance)")
    config.addinivalue_line("markers", "subprocess: runs the CLI in a subprocess")
