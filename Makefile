# The README's two commands. Both are idempotent: they set up .venv and the data first.
.PHONY: demo test setup
demo:
	bash scripts/bootstrap.sh demo
test:
	bash scripts/bootstrap.sh test
setup:
	bash scripts/bootstrap.sh setup
