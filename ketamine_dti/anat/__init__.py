"""anat."""
