"""``python -m tokenquota.cli``: the command line where no ``tokenquota`` script is installed."""

from tokenquota.cli import main

main()
