"""vmnet's XSK program: xsk_redirect.c and the object built from it, shipped as package data."""
