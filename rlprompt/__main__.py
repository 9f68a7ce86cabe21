"""`python -m rlprompt <command> ARGS` = `rlprompt <command> ARGS`."""

from rlprompt.commands import main

if __name__ == "__main__":
    main()
