"""Salesforce to Charles contact connector."""

__version__ = "0.1.0"
