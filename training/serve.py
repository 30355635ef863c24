"""`python -m training.serve`, the local endpoint's first name, kept working; it lives in serving/server."""

from serving.server import main

if __name__ == "__main__":
    main()
