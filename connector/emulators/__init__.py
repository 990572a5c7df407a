"""Local emulators of the Salesforce REST API and the Charles contact API, for tests and the demo."""
