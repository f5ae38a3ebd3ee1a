"""Pure quota arithmetic: no I/O, no wall clock. See README.md beside this file."""
