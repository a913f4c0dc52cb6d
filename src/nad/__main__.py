from nad.cli import run

run()
