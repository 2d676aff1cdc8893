"""Readers and writers of the file formats a back-end plant receives (STDF, E142, G85, SINF)."""
