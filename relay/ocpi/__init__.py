"""OCPI 2.1.1: what the objects mean and how a pushed body is checked."""
