"""The replay benchmark."""
