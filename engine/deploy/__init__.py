"""Deployment (issue 17): export a finished run's kept weights the ways each framework ships them, prove each
export equal to the trained model, and measure loading, inference and serving, each artifact in a fresh process."""
