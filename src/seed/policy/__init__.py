"""Provenance against each teacher's terms: the gate before training, and the cards after."""
