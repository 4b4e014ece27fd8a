"""pull package."""
