from recognize.cli import main

main()
