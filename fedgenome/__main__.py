"""``python -m fedgenome``: the same as the ``fedgenome`` command."""

from fedgenome.cli import main

main()
