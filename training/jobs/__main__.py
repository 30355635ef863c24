import sys

from training.jobs.cli import main

sys.exit(main())
