"""Arena's framework-neutral core. Importing it imports neither torch nor tensorflow."""
