"""`python -m service`: the same commands as the `webhook-service` script."""

from service.cli import main

raise SystemExit(main())
