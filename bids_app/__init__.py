"""ketamine-dti BIDS-App entry point."""
