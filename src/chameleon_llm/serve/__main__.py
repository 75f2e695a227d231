"""``python -m chameleon_llm.serve [--config F] [--host H] [--port P] [--store PATH]``.

The same as ``chameleon serve``, without the CLI.
"""

from __future__ import annotations

import argparse

from .app import run_server
from .settings import ServeSettings, SettingsError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chameleon_llm.serve", description=__doc__)
    parser.add_argument("--config", help="TOML or JSON settings file")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--store", help="SQLite database file")
    args = parser.parse_args(argv)
    try:
        settings = ServeSettings.load(args.config, host=args.host, port=args.port, store=args.store)
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    run_server(settings)


if __name__ == "__main__":
    main()
