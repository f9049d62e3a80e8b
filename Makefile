# Packaging targets; the scripts say what they do in their headers.
#   make wheels      abi3 manylinux2014 wheels (x86_64, and aarch64 when rustup has its target) and the sdist, into dist/
#   make sdist       the sdist only
#   make test-wheel  tests/ against the installed x86_64 wheel in a fresh venv without Rust on PATH
# Pass more options with ARGS, e.g. `make wheels ARGS=--verify-repro`, `make test-wheel ARGS="--python python3.10"`.

.PHONY: wheels sdist test-wheel

wheels:
	scripts/build-wheels.sh $(ARGS)

sdist:
	scripts/build-wheels.sh --targets "" $(ARGS)

test-wheel:
	scripts/test-wheel.sh $(ARGS)
