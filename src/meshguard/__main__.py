from meshguard.cli.main import main

raise SystemExit(main())
