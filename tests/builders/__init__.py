"""Builders of test inputs (jobs, pods, manifests, recording fakes), shared by every tier; test
modules import them from here, never from each other."""
