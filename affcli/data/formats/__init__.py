"""Readers for the raw on-disk formats of LASO, PIAD and AGPIL."""
