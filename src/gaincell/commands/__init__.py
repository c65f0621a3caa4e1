"""One module per ``gaincell`` command: argument parsing and printing only, no library logic.

Each module has ``add_arguments(parser)`` and ``run(args) -> int``; :mod:`gaincell.cli` lists them
and imports only the one asked for. Library modules never import from here.
"""
