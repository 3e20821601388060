"""Test harness: starts real services on loopback and runs modules as Ansible would."""
