from lw.cli import main

main()
