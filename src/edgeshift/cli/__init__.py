"""The command line: parse, call the library, render with rich. No logic lives here."""
