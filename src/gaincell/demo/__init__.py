"""The whole experiment at laptop scale, offline (``gaincell demo``)."""
