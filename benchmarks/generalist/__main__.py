from .heldout import main

main()
