#!/usr/bin/env bash
# Placeholder: creates the Python venv for the end-to-end suite.
exit 0
