"""Reusable network blocks: hourglass, covariance pooling, attention."""
