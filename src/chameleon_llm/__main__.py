"""`python -m chameleon_llm` runs the CLI."""

from .cli import main

main()
