"""sessiond tests."""
